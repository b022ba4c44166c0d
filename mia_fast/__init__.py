"""mia-fast: defenses against membership inference attacks, with fused CPU/CUDA kernels.

Public API:
    create_defense, defense_names, load_defense  -- every defense, by name (mia_fast.defenses)
    aeppt, AEPPTDefense, AEPPTResult, PAPER_EPS -- AEPPT output perturbation (Xue et al.)
    SubstituteMIM, FoldedMIM, train_substitute   -- the defender's substitute MIM
    select_within_distance                        -- distance-constrained selection (Bai et al.)
"""
from . import ops
from .defenses import PAPER_EPS, AEPPTDefense, AEPPTResult, aeppt, create_defense, defense_names, load_defense
from .models import FoldedMIM, SubstituteMIM
from .ops import select_within_distance
from .training import train_substitute
from .version import __version__

__all__ = ["create_defense", "defense_names", "load_defense", "aeppt", "AEPPTDefense", "AEPPTResult", "PAPER_EPS", "SubstituteMIM", "FoldedMIM", "train_substitute",
           "select_within_distance", "ops", "__version__"]
