"""Figures and tables that belong to one defense, not to the battery: AEPPT's step-size sweep (Xue et
al., Tables 3-4) and the adversary's loss during Algorithm 1 (Fig. 5). `DIAGNOSTICS` maps a defense
name to a function (threat, deployment) -> {key: numbers} merged into its evaluation."""
from __future__ import annotations

import torch

from ..attacks import MetricAttack
from ..defenses.output.aeppt import AEPPT, draw_steps
from ..ops.reference import aeppt_loop
from ..seeding import stream
from .battery import measure, naive_attack
from .threat import Deployment, Records, ThreatModel

Tensor = torch.Tensor


def step_size_sweep(threat: ThreatModel, deployment: Deployment, mim0=None) -> list:
    """For eps in multiples of the deployed eps (every other hyperparameter as deployed): the mean L1 size of the perturbation, the naive MIM0's
    inference accuracy (``mim0``, default the battery's), and a defense-aware confidence attack
    (per-class thresholds refitted on the deployed answers for the known records at that eps)."""
    defense, mim0 = deployment.deployed, mim0 or naive_attack(threat, "mim0")
    known_raw, scored_raw = threat.target_outputs("known"), threat.target_outputs("scored")
    rows = []
    for k, factor in enumerate(threat.opt.sweep):
        eps = factor * defense.eps

        at_eps = AEPPT.from_substitute(defense.substitute, query_key=getattr(defense, "query_key", None),
                                       **{**defense.params(), "eps": eps})

        def d(p: Tensor, which: int, at_eps=at_eps) -> Tensor:
            return at_eps.defend(p.float().to(threat.cfg.device), generator=stream(threat.seed, "sweep", 4 * k + which),
                                 check_inputs=False).defended.cpu()

        scored = scored_raw.with_probs(d(scored_raw.member_probs, 0), d(scored_raw.nonmember_probs, 1))
        known = known_raw.with_probs(d(known_raw.member_probs, 2), d(known_raw.nonmember_probs, 3))
        l1 = torch.cat([(scored.member_probs - scored_raw.member_probs).abs().sum(1),
                        (scored.nonmember_probs - scored_raw.nonmember_probs).abs().sum(1)])
        naive = measure(mim0, scored, per_class=False)[0]
        aware = measure(known.fit(MetricAttack("confidence")), scored, per_class=False)[0]
        rows.append({"eps": eps, "mean_l1": float(l1.mean()), "mim0_accuracy": naive["accuracy"],
                     "mim0_precision": naive["precision"], "mim0_recall": naive["recall"],
                     "mim0_auc_leak": naive["auc_leak"], "aware_confidence_accuracy": aware["accuracy"],
                     "aware_confidence_auc_leak": aware["auc_leak"]})
    return rows


def attacker_loss_curve(threat: ThreatModel, deployment: Deployment, *, points: int = 21) -> dict:
    """The adversary's MIM0 loss (binary cross-entropy against true membership) on the scored records'
    outputs as Algorithm 1 runs, at ``points`` iterations from 0 to T. Runs the plain PyTorch reference
    of the fused op (`aeppt_loop`) to look inside the loop."""
    defense, mim0 = deployment.deployed, naive_attack(threat, "mim0")
    scored: Records = threat.target_outputs("scored")
    probs = torch.cat([scored.member_probs, scored.nonmember_probs]).float()
    labels = torch.cat([scored.member_labels, scored.nonmember_labels])
    member = torch.cat([torch.ones(len(scored.member_labels)), torch.zeros(len(scored.nonmember_labels))])
    record_at = sorted({round(i * defense.iters / (points - 1)) for i in range(points)})
    curve = {}

    @torch.no_grad()
    def record(t: int, adv: Tensor) -> None:
        if t in record_at:
            z = mim0.model.logit(adv, labels)
            curve[t] = float(torch.nn.functional.binary_cross_entropy_with_logits(z, member))

    steps = draw_steps(defense.iters, len(probs), defense.eps, generator=stream(threat.seed, "loss-curve"))
    aeppt_loop(probs, defense.substitute.fold().logit, steps, preserve_label=defense.preserve_label,
               stop_when_flipped=defense.stop_when_flipped, renormalize=defense.renormalize, on_step=record)
    return {"iteration": list(curve), "loss": list(curve.values())}


def aeppt_diagnostics(threat: ThreatModel, deployment: Deployment) -> dict:
    return {"step_size_sweep": step_size_sweep(threat, deployment),
            "attacker_loss": attacker_loss_curve(threat, deployment)}


DIAGNOSTICS = {"aeppt": aeppt_diagnostics}
