"""Training-time defenses: each module registers one class (`mia_fast.defenses.register_defense`)."""
from .advreg import AdversarialRegularization
from .dp_sgd import DPSGD
from .dropout import Dropout
from .early_stopping import EarlyStopping
from .hamp_training import HAMPTraining
from .input_perturbation import InputPerturbation
from .l2 import WeightDecay
from .relaxloss import RelaxLoss

__all__ = ["AdversarialRegularization", "DPSGD", "Dropout", "EarlyStopping", "HAMPTraining", "InputPerturbation", "RelaxLoss",
           "WeightDecay"]
