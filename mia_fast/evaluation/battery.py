"""The attack battery: every registered attack without a defense, against one deployed output defense as a
naive attacker, and as a defense-aware one (`mia_fast.evaluation.threat` says who sees what); adaptive
attacks; the defense's own diagnostics. `evaluate_run` writes evaluation.json and the report.

Adaptive attacks. Against every defense: rounding (MIM0 fitted and applied on answers rounded to 3
decimals, fitted on the deployed answers for the known records) and averaging (each record queried
``queries`` times, answers averaged, MIM0 fitted and applied on averages; a deterministic defense
answers the same every time, so one query). Those only a defense declares (``adaptive_attacks``; AEPPT:
Xue et al. sec. 5.8): flip (the naive MIM0's decisions flipped) and adversarial_training (MIM0 fitted
on the attacker's own copy of the defense, fitted on and applied to its known records).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from ..attacks import ATTACKS, Flipped, Rounded, attack_names, create_attack
from ..metrics import attack_metrics, gap_floor, per_class_metrics
from ..seeding import stream, stream_seed
from .threat import Deployment, Options, Records, ThreatModel

__all__ = ["Options", "Records", "ThreatModel", "Deployment", "measure", "run_attack", "run_adaptive",
           "evaluate_defense", "evaluate_run", "format_evaluation", "ADAPTIVE", "GENERIC_ADAPTIVE"]

GENERIC_ADAPTIVE = ("rounding", "averaging")
ADAPTIVE = ("flip", "rounding", "adversarial_training", "averaging")


def measure(attack, scored: Records, *, per_class: bool = True) -> tuple:
    """(attack_metrics at the attack's threshold, AUC sliced by whether the served label is right, and
    per-class accuracy/precision/recall unless ``per_class`` is False; the member and non-member scores)."""
    s_in, s_out = scored.score(attack)
    correct = [(p.argmax(1) == y).numpy() for p, y in ((scored.member_probs, scored.member_labels),
                                                       (scored.nonmember_probs, scored.nonmember_labels))]
    m = attack_metrics(s_in, s_out, threshold=attack.threshold, member_correct=correct[0], nonmember_correct=correct[1])
    if per_class:
        by_class = per_class_metrics(s_in, scored.member_labels.numpy(), s_out, scored.nonmember_labels.numpy(),
                                     threshold=attack.threshold)
        for key in ("accuracy", "precision", "recall"):
            m[f"per_class_{key}"] = {c: v[key] for c, v in by_class.items()}
    return m, (s_in, s_out)


def _context(recs: Records, needs, reference: Callable, noisy_labels: Callable, boundary: Callable,
             shadow_reference: Callable) -> Records:
    for need, compute in (("reference", reference), ("shadow_reference", shadow_reference),
                          ("noisy_labels", noisy_labels), ("boundary_distance", boundary)):
        if need in needs:
            member, nonmember = compute()
            recs.member_context = {**recs.member_context, **member}
            recs.nonmember_context = {**recs.nonmember_context, **nonmember}
    return recs


def _fit_data(threat: ThreatModel, name: str, deployment: Optional[Deployment]) -> Records:
    """What attack ``name`` learns from: undefended (``deployment`` None) or as the aware attacker sees it."""
    spec, d = ATTACKS[name], deployment
    if spec.source == "shadow":
        return d.shadow_data() if d else threat.shadow_data()
    if spec.source == "ood":
        recs = d.ood_data() if d else threat.ood_data()
    else:
        recs = d.served("known") if d else threat.target_outputs("known")
    return _context(recs, spec.needs, lambda: (d or threat).reference("known"),
                    lambda: (d or threat).noisy_labels("known"), lambda: _boundary(threat, d, "known"),
                    lambda: threat.reference("known"))


def _scored_data(threat: ThreatModel, name: str, deployment: Optional[Deployment], setting: str) -> Records:
    """The scored records as served in ``setting``. LiRA's references are defended only by the aware
    attacker (it alone runs its copy of the defense), label-only LiRA's never (the attacker owns its shadow
    models); noisy-query labels are whatever the target serves."""
    d = deployment if setting != "none" else None
    recs = d.served("scored") if d else threat.target_outputs("scored")
    return _context(recs, ATTACKS[name].needs,
                    lambda: (deployment if setting == "aware" else threat).reference("scored"),
                    lambda: (d or threat).noisy_labels("scored"), lambda: _boundary(threat, d, "scored"),
                    lambda: threat.reference("scored"))


def _boundary(threat: ThreatModel, deployment: Optional[Deployment], which: str) -> tuple:
    if deployment is not None:
        return deployment.boundary_distance(which)
    return threat.memo(("boundary", which), lambda: threat.boundary_distance(which))


def _make(threat: ThreatModel, name: str):
    return create_attack(name, epochs=threat.opt.epochs, seed=stream_seed(threat.seed, "attack"),
                         device=threat.cfg.device)


def naive_attack(threat: ThreatModel, name: str):
    """Attack ``name`` fitted on undefended data (shared by every defense evaluated on ``threat``)."""
    return threat.memo(("naive", name), lambda: _fit_data(threat, name, None).fit(_make(threat, name)))


def run_attack(threat: ThreatModel, name: str, deployment: Optional[Deployment] = None) -> tuple:
    """One attack without the defense and, with a ``deployment``, naive and aware: ({setting: metrics},
    {setting: (member scores, non-member scores)})."""
    naive = naive_attack(threat, name)
    results, scores = {}, {}
    results["none"], scores["none"] = threat.memo(("none", name),
                                                  lambda: measure(naive, _scored_data(threat, name, None, "none")))
    if deployment is not None:
        aware = _fit_data(threat, name, deployment).fit(_make(threat, name))
        for setting, attack in (("naive", naive), ("aware", aware)):
            results[setting], scores[setting] = measure(attack, _scored_data(threat, name, deployment, setting))
    return results, scores


def run_adaptive(threat: ThreatModel, deployment: Deployment) -> dict:
    """The adaptive attacks for ``deployment``'s defense (module docstring), scored on served outputs."""
    make = lambda: _make(threat, "mim0")  # noqa: E731
    metrics = lambda attack, scored: measure(attack, scored, per_class=False)[0]  # noqa: E731
    scored_served = deployment.served("scored")
    out = {}
    for name in [n for n in ADAPTIVE if n in GENERIC_ADAPTIVE or n in deployment.defense.adaptive_attacks]:
        if name == "flip":
            out[name] = metrics(Flipped(naive_attack(threat, "mim0")), scored_served)
        elif name == "rounding":
            out[name] = metrics(deployment.served("known").fit(Rounded(make(), decimals=3)), scored_served)
        elif name == "adversarial_training":
            known, device = threat.target_outputs("known"), threat.cfg.device
            copy = deployment.attacker_copy(lambda: known, "adaptive-fit")
            trained = known.with_probs(*(copy.defend(p.to(device), generator=stream(threat.seed, "adaptive-defense", i))
                                         .defended.cpu()
                                         for i, p in enumerate((known.member_probs, known.nonmember_probs))))
            out[name] = metrics(trained.fit(make()), scored_served)
        elif name == "averaging":
            queries = threat.opt.queries if deployment.defense.randomized else 1

            def averaged(recs: Records, purpose: str) -> Records:
                return recs.with_probs(*(torch.stack([deployment.serve(p, purpose, 2 * q + side)
                                                      for q in range(queries)]).mean(0)
                                         for side, p in enumerate((recs.member_probs, recs.nonmember_probs))))

            known_avg = averaged(threat.target_outputs("known"), "averaging-known")
            scored_avg = averaged(threat.target_outputs("scored"), "averaging-scored")
            out[name] = {**metrics(known_avg.fit(make()), scored_avg), "queries": queries}
    return out


def summarize(evaluation: dict, gap: float) -> dict:
    """The numbers a comparison needs from one defense's evaluation, beside the gap floor: the best aware
    attack of all (label-only ones included) and the best that reads confidence values (the adaptive
    attacks count: they are MIM0), with AUC and TPR at 0.1% FPR; and the leakage beyond the label, the
    largest AUC among correctly classified records over the aware attacks that read confidence values."""
    aware = {name: r["aware"] for name, r in evaluation["attacks"].items()}
    aware.update({f"adaptive:{name}": m for name, m in evaluation.get("adaptive", {}).items()})
    scores = {n: m for n, m in aware.items() if n.startswith("adaptive:") or not ATTACKS[n].label_only}
    best = max(aware, key=lambda n: aware[n]["accuracy"])
    out = {"best_aware_attack": best, "best_aware_accuracy": aware[best]["accuracy"],
           "best_aware_auc": max(m["auc_leak"] for m in aware.values()),
           "best_aware_tpr_at_0.1%_fpr": max(m["tpr_at_0.1%_fpr"] for m in aware.values()), "gap_floor": gap}
    beyond = {n: m["auc_correct_leak"] for n, m in scores.items() if not math.isnan(m.get("auc_correct_leak", math.nan))}
    best_scores = max(scores, key=lambda n: scores[n]["accuracy"]) if scores else None
    out.update({"best_score_attack": best_scores,
                "best_score_accuracy": scores[best_scores]["accuracy"] if scores else math.nan,
                "beyond_label_attack": max(beyond, key=beyond.get) if beyond else None,
                "beyond_label_auc": max(beyond.values()) if beyond else math.nan})
    return out


def evaluate_defense(threat: ThreatModel, deployment: Deployment, names, *, adaptive: bool = True,
                     sweep: bool = True) -> tuple:
    """Every attack in ``names``, the adaptive attacks and the defense's diagnostics: (evaluation dict,
    {attack: {setting: scores}})."""
    from .diagnostics import DIAGNOSTICS

    results, scores = {}, {}
    for name in names:
        t0 = time.perf_counter()
        results[name], scores[name] = run_attack(threat, name, deployment)
        threat.log(f"{deployment.name} / {name}: {time.perf_counter() - t0:.1f} s")
    out = {"defense": {"name": deployment.name, "params": deployment.defense.params(),
                       **{k: deployment.summary[k] for k in ("key", "target", "perturbation", "defense")}},
           "attacks": results}
    if adaptive:
        t0 = time.perf_counter()
        out["adaptive"] = run_adaptive(threat, deployment)
        threat.log(f"{deployment.name} / adaptive attacks: {time.perf_counter() - t0:.1f} s")
    if sweep and deployment.name in DIAGNOSTICS:
        t0 = time.perf_counter()
        out.update(DIAGNOSTICS[deployment.name](threat, deployment))
        threat.log(f"{deployment.name} / diagnostics: {time.perf_counter() - t0:.1f} s")
    out["summary"] = summarize(out, gap_floor(threat.accuracy["train"], threat.accuracy["test"]))
    return out, scores


def resolve_attacks(attacks, options: Options) -> list:
    """The attack names to run: ``attacks`` (checked), or every one the options allow (no shadow-model
    attacks with ``shadows=0``)."""
    names = list(attacks) if attacks is not None else attack_names(shadows=options.shadows > 0)
    if not names:
        raise ValueError("attacks: name at least one attack")
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return names


def run_header(threat: ThreatModel, names) -> dict:
    """What every evaluation and comparison records about the run and the attacker."""
    opt = threat.opt
    out = {"dataset": threat.cfg.dataset, "known_members": len(threat.splits.adversary_members),
           "known_nonmembers": len(threat.splits.adversary_nonmembers),
           "scored_members": len(threat.splits.eval_members), "scored_nonmembers": len(threat.splits.eval_nonmembers),
           "target": {"train_accuracy": threat.accuracy["train"], "test_accuracy": threat.accuracy["test"]},
           "gap_floor": gap_floor(threat.accuracy["train"], threat.accuracy["test"]),
           "options": {"epochs": opt.epochs, "shadows": opt.shadows, "queries": opt.queries,
                       "noisy_copies": opt.noisy_copies},
           "descriptions": {name: ATTACKS[name].description for name in names}}
    if opt.shadows > 0 and any("shadows" in ATTACKS[n].needs for n in names):
        out["shadow_pool"] = len(threat.pool)
    if any(ATTACKS[n].source == "ood" or "noisy_labels" in ATTACKS[n].needs for n in names):
        out["options"]["noise"] = dict(zip(("kind", "strength"), threat.noise))
    return out


def evaluate_run(run_dir, *, defense: str = "aeppt", params: Optional[dict] = None, attacks=None,
                 adaptive: bool = True, sweep: bool = True, options: Optional[Options] = None,
                 log: Optional[Callable[[str], None]] = None, progress: bool = False, engine=None) -> dict:
    """Run the battery against one output defense on a run made by `run_demo` (or `train-target`);
    saves evaluation.json and the report (evaluation.md, evaluation.html, PNG figures) in the run
    directory. ``sweep`` runs the defense's diagnostics (AEPPT: step-size sweep, Fig. 5 loss curve); shadow
    models train on ``engine`` (`mia_fast.distributed`; default: this process)."""
    options = options or Options()
    names = resolve_attacks(attacks, options)
    threat = ThreatModel(run_dir, options, log=log, progress=progress, engine=engine)
    deployment = Deployment(threat, defense, params)
    started = time.perf_counter()
    evaluation, scores = evaluate_defense(threat, deployment, names, adaptive=adaptive, sweep=sweep)
    out = {**run_header(threat, names), **evaluation, "seconds": time.perf_counter() - started}
    threat.run.write_json("evaluation.json", out)
    from .report import write_report

    write_report(threat.run.path, out, scores)
    return out


def format_evaluation(ev: dict) -> str:
    """The summary table printed by `mia-fast evaluate`: accuracy / AUC per attack and setting."""
    label = ev["defense"]["name"]
    lines = [f"{ev['dataset']}: attacks on {ev['scored_members']} members + {ev['scored_nonmembers']} non-members "
             f"(accuracy / AUC, AUC counted as leakage below 0.5 too); defense {label}, mean L1 "
             f"{ev['defense']['perturbation']['mean_l1']:.3f}",
             f"{'attack':18s}{'no defense':>16s}{label + ', naive':>20s}{label + ', aware':>20s}"]
    cell = lambda m: f"{100 * m['accuracy']:.1f}% / {100 * m['auc_leak']:.1f}%"  # noqa: E731
    for name, r in ev["attacks"].items():
        lines.append(f"{name:18s}{cell(r['none']):>16s}{cell(r['naive']):>20s}{cell(r['aware']):>20s}")
    if "adaptive" in ev:
        lines.append(f"adaptive attacks on {label}: " + ", ".join(f"{name} {cell(m)}" for name, m in ev["adaptive"].items()))
    s = ev["summary"]
    lines.append(f"best aware attack {s['best_aware_attack']} {100 * s['best_aware_accuracy']:.1f}%, best that reads "
                 f"scores {s['best_score_attack']} {100 * s['best_score_accuracy']:.1f}%, against the gap floor "
                 f"{100 * s['gap_floor']:.1f}%; leakage beyond the label (AUC among correctly classified) "
                 f"{100 * s['beyond_label_auc']:.1f}% ({s['beyond_label_attack']})")
    return "\n".join(lines)
