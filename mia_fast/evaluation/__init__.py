"""Evaluation: membership-inference metrics."""
from .metrics import attack_metrics

__all__ = ["attack_metrics"]
