"""Output defenses: each module registers one class (`mia_fast.defenses.register_defense`)."""
from .aeppt import AEPPT, AEPPTDefense, AEPPTResult, PAPER_EPS, aeppt, draw_steps
from .hamp_output import HAMPOutput
from .label_only import LabelOnly
from .memguard import MemGuard
from .rank_template import RankTemplate
from .rounding import Rounding
from .topk import TopK

__all__ = ["AEPPT", "AEPPTDefense", "AEPPTResult", "PAPER_EPS", "aeppt", "draw_steps", "HAMPOutput", "LabelOnly",
           "MemGuard", "RankTemplate", "Rounding", "TopK"]
