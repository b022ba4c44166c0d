"""Defenses against membership inference."""
from .aeppt import AEPPTDefense, AEPPTResult, PAPER_EPS, aeppt

__all__ = ["aeppt", "AEPPTDefense", "AEPPTResult", "PAPER_EPS"]
