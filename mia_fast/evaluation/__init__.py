"""Evaluation: membership-inference metrics and the attack battery."""
from .metrics import attack_metrics, per_class_metrics, tpr_at_fpr

__all__ = ["attack_metrics", "per_class_metrics", "tpr_at_fpr"]
