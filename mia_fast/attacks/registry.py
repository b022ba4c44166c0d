"""The attack registry: each attack's name, how to make it, what data it learns from and what else it
needs. The battery, the CLI and the report read their lists from here.

    source  known   the target's answers on the attacker's known records
            shadow  the shadow models' outputs on the attacker's pool (member = trained that shadow)
            ood     known members + answers on corrupted copies of known non-members (MIM3)
    needs   shadows       shadow models (source shadow, or shadow references)
            reference     per-record shadow outputs as ``reference`` context (LiRA), defended by the
                          aware attacker's own copy of the defense
            shadow_reference  the same, always undefended: the attacker owns its shadow models and reads
                          their full outputs (label-only LiRA)
            noisy_labels  labels of noisy queries as ``noisy_labels`` context (robustness)
            boundary_distance  the label-only distance to the decision boundary (boundary)
    label_only  the attack reads only labels (no confidence values): no output defense that keeps the
                labels changes what it sees
    family  metric     a threshold on one score of the served vector (confidence, entropy, ...)
            learned    an attack model fitted on served vectors (the MIMs, Shokri's networks)
            reference  per-record shadow references (LiRA, RMIA)
            label      labels only

>>> sorted(ATTACKS)[:3]
['boundary', 'confidence', 'entropy']
>>> create_attack("mim0", epochs=1, seed=0, device="cpu")
NNAttack(kind='mim0', epochs=1, lr=0.001, batch_size=128, seed=0, device='cpu')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from .base import Attack
from .boundary import BoundaryAttack
from .label_lira import LabelLiRA
from .label_only import RobustnessAttack
from .lira import LiRAOffline
from .metric import MetricAttack
from .nn import NNAttack
from .rmia import RMIAOffline

SOURCES = ("known", "shadow", "ood")
FAMILIES = ("metric", "learned", "reference", "label")
NEEDS = ("shadows", "reference", "shadow_reference", "noisy_labels", "boundary_distance")


@dataclass(frozen=True)
class AttackSpec:
    make: Callable[[int, int, str], Attack]  # (epochs, seed, device) -> a fresh attack
    source: str
    needs: frozenset
    description: str
    family: str
    label_only: bool = False


ATTACKS: Dict[str, AttackSpec] = {}


def register_attack(name: str, make: Callable[[int, int, str], Attack], *, source: str, family: str, needs=(),
                    description: str, label_only: bool = False) -> None:
    """Add an attack: ``make(epochs, seed, device)`` returns a fresh, unfitted one."""
    if (name in ATTACKS or source not in SOURCES or not set(needs) <= set(NEEDS) or family not in FAMILIES
            or label_only != (family == "label")):
        raise ValueError(f"attack {name!r}: taken name, or source not in {SOURCES}, needs not in {NEEDS}, or family "
                         f"not in {FAMILIES} (label exactly for label-only attacks)")
    needs = set(needs) | ({"shadows"} if source == "shadow" or {"reference", "shadow_reference"} & set(needs) else set())
    ATTACKS[name] = AttackSpec(make, source, frozenset(needs), description, family, label_only)


def create_attack(name: str, *, epochs: int, seed: int, device: str) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return ATTACKS[name].make(epochs, seed, device)


def attack_names(*, shadows: bool = True) -> list:
    """Every attack, or (``shadows=False``) those that need no shadow models."""
    return [name for name, spec in ATTACKS.items() if shadows or "shadows" not in spec.needs]


register_attack("gap", lambda e, s, d: MetricAttack("correctness"), source="known", family="label", label_only=True,
                description="label-only gap attack: member iff correctly classified (Yeom et al.)")
for _metric, _text in [("confidence", "true-class confidence, per-class thresholds from shadow models (Song & Mittal)"),
                       ("entropy", "prediction entropy, per-class thresholds"),
                       ("modified_entropy", "modified entropy (Song & Mittal), per-class thresholds")]:
    register_attack(_metric, lambda e, s, d, m=_metric: MetricAttack(m), source="shadow", family="metric",
                    description=_text)
register_attack("mim0", lambda e, s, d: NNAttack("mim0", epochs=e, seed=s, device=d), source="known", family="learned",
                description="the paper's adversary: three-branch network on known records (sec. 5.2)")
register_attack("mim1", lambda e, s, d: NNAttack("mim1", epochs=e, seed=s, device=d), source="known", family="learned",
                description="fully connected [1024, 512, 256, 1] (Table 6)")
register_attack("mim2", lambda e, s, d: NNAttack("mim2", epochs=e, seed=s, device=d), source="known", family="learned",
                description="MIM0 with an L2 loss")
register_attack("mim3", lambda e, s, d: NNAttack("mim0", epochs=e, seed=s, device=d), source="ood", family="learned",
                description="MIM0 whose non-members are corrupted copies of known non-members (another distribution)")
# shadow data is K x the pool: larger batches keep the number of steps (and the time) in line
register_attack("shokri", lambda e, s, d: NNAttack("shokri", epochs=e, batch_size=512, seed=s, device=d),
                source="shadow", family="learned",
                description="per-class attack networks on shadow-model outputs (Shokri et al.)")
register_attack("lira", lambda e, s, d: LiRAOffline(), source="known", family="reference", needs=("reference",),
                description="offline LiRA: per-record Gaussian of shadow models' logit-scaled confidence (Carlini et al.)")
register_attack("robustness", lambda e, s, d: RobustnessAttack(), source="known", family="label",
                needs=("noisy_labels",), label_only=True,
                description="label-only: share of noisy copies still labelled correctly (Choquette-Choo et al.)")
register_attack("rmia", lambda e, s, d: RMIAOffline(), source="known", family="reference", needs=("reference",),
                description="offline RMIA: likelihood ratio against population records (Zarifzadeh et al.)")
register_attack("boundary", lambda e, s, d: BoundaryAttack(), source="known", family="label",
                needs=("boundary_distance",), label_only=True, description="label-only: distance to the decision boundary by label queries "
                "(bit flips / random directions; Choquette-Choo et al., Li & Zhang)")
register_attack("label_lira", lambda e, s, d: LabelLiRA(), source="known", family="label",
                needs=("shadow_reference",), label_only=True,
                description="label-only LiRA: the served label against each record's chance of a right label "
                "from shadow models that did not train on it (their margins; Carlini et al., Watson et al.)")
