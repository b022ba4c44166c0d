"""Defenses against membership inference: one interface (`OutputDefense`, `TrainingDefense`) and a
registry (`create_defense(name, **params)`, `defense_names()`); output defenses in `output/`, training
defenses in `training/`, combinations of one of each (`parse_spec("advreg+aeppt")`) in `combination.py`."""
from .base import (DEFENSES, DefenseResult, OutputDefense, TrainingDefense, create_defense, defense_names,
                   describe_defenses, load_defense, parse_param, register_defense)
from .combination import COMBINATIONS, DefenseSpec, parse_spec
from .output import (AEPPT, PAPER_EPS, AEPPTDefense, AEPPTResult, HAMPOutput, LabelOnly, MemGuard, RankTemplate,
                     Rounding, TopK, aeppt)
from .training import (DPSGD, AdversarialRegularization, Dropout, EarlyStopping, HAMPTraining, RelaxLoss,
                       WeightDecay)

__all__ = ["DEFENSES", "DefenseResult", "OutputDefense", "TrainingDefense", "create_defense", "defense_names",
           "describe_defenses", "load_defense", "parse_param", "register_defense", "AEPPT", "AEPPTDefense",
           "AEPPTResult", "PAPER_EPS", "aeppt", "HAMPOutput", "LabelOnly", "MemGuard", "RankTemplate", "Rounding", "TopK",
           "COMBINATIONS", "DefenseSpec", "parse_spec", "DPSGD", "AdversarialRegularization", "Dropout",
           "EarlyStopping", "HAMPTraining", "RelaxLoss", "WeightDecay"]
