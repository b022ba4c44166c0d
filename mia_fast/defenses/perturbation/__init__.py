"""The input-perturbation framework (Bai et al., "A Defense Framework for Privacy Risks in Remote Machine
Learning Service", Security and Communication Networks 2021): the data owner uploads perturbed copies of
its training records, picked per record under a distance threshold eps by a generator, a simulator of
the remote model and a privacy-leakage evaluator (`protect_data`). Generators (one file each) are made by
name: ``create_generator("fgsm")``, ``"advgan"``, ``"optmargin"``."""
from .advgan import AdvGAN
from .base import (DISTANCES, GENERATORS, Generator, create_generator, parse_generator_params, radius,
                   register_generator)
from .fgsm import FGSM
from .framework import FALLBACKS, LABEL_REFERENCES, Protection, check_protection_args, perturbed_subset, protect_data
from .optmargin import OptMargin
from .simulator import Feedback, Leakage, LeakageEvaluator, MembershipClassifier, Simulator, fresh_copy

__all__ = ["AdvGAN", "FGSM", "OptMargin", "DISTANCES", "GENERATORS", "Generator", "create_generator", "parse_generator_params", "radius",
           "register_generator", "FALLBACKS", "LABEL_REFERENCES", "Protection", "check_protection_args",
           "perturbed_subset", "protect_data", "Feedback", "Leakage", "LeakageEvaluator", "MembershipClassifier",
           "Simulator", "fresh_copy"]
