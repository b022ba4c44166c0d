"""Models: target classifiers, the defender's substitute MIM, the adversary's MIMs."""
from .attack import AttackMIM
from .substitute import FoldedMIM, SubstituteMIM
from .target import TARGETS, AlexNet32, SmallCNN28, TabularMLP, target_for

__all__ = ["SubstituteMIM", "FoldedMIM", "AttackMIM", "TabularMLP", "AlexNet32", "SmallCNN28", "TARGETS",
           "target_for"]
