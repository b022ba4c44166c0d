"""Models: the defender's substitute membership-inference model."""
from .substitute import FoldedMIM, SubstituteMIM

__all__ = ["SubstituteMIM", "FoldedMIM"]
