"""Membership-inference attacks, each with fit / score / infer."""
from .base import Attack
from .metric import MetricAttack, metric_scores
from .nn import FullyConnectedMIM, NNAttack

__all__ = ["Attack", "MetricAttack", "metric_scores", "NNAttack", "FullyConnectedMIM"]
