"""Membership-inference attacks, each with fit / score / infer."""
from .adaptive import Flipped, Rounded
from .base import Attack
from .boundary import BoundaryAttack, boundary_distance
from .label_lira import LabelLiRA, label_margin
from .label_only import RobustnessAttack, noisy_copies, query_labels
from .lira import LiRAOffline, scaled_confidence
from .metric import MetricAttack, metric_scores
from .nn import FullyConnectedMIM, NNAttack, PerClassMLP
from .rmia import RMIAOffline
from .registry import ATTACKS, attack_names, create_attack, register_attack
from .shadow import ShadowModels, shadow_records, train_shadow_models

__all__ = ["Attack", "MetricAttack", "metric_scores", "NNAttack", "FullyConnectedMIM", "PerClassMLP", "LiRAOffline",
           "scaled_confidence", "RobustnessAttack", "noisy_copies", "query_labels", "Flipped", "Rounded",
           "ShadowModels", "shadow_records", "train_shadow_models", "ATTACKS", "attack_names", "create_attack",
           "register_attack", "BoundaryAttack", "boundary_distance", "RMIAOffline", "LabelLiRA", "label_margin"]
