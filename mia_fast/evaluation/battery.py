"""Attack battery on a run directory: each attack without the defense, against AEPPT as the paper's naive
adversary (fitted on undefended outputs of its known records), and defense-aware (fitted on the defended
outputs the deployed target returns for those same records: the paper's threat model gives the attacker
the algorithm, and a deployed defended model only ever answers with defended outputs)."""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

from ..attacks import Attack, MetricAttack, NNAttack
from ..pipeline import RunDir, record_positions
from .metrics import per_class_metrics

ATTACKS: Dict[str, Callable[[int, int, str], Attack]] = {
    "correctness": lambda epochs, seed, device: MetricAttack("correctness"),
    "confidence": lambda epochs, seed, device: MetricAttack("confidence"),
    "entropy": lambda epochs, seed, device: MetricAttack("entropy"),
    "modified_entropy": lambda epochs, seed, device: MetricAttack("modified_entropy"),
    "mim0": lambda epochs, seed, device: NNAttack("mim0", epochs=epochs, seed=seed, device=device),
    "mim1": lambda epochs, seed, device: NNAttack("mim1", epochs=epochs, seed=seed, device=device),
    "mim2": lambda epochs, seed, device: NNAttack("mim2", epochs=epochs, seed=seed, device=device),
}


def evaluate_run(run_dir, *, attacks=None, epochs: int = 100, log: Optional[Callable[[str], None]] = None) -> dict:
    """Run the attacks on a run made by `run_demo` (needs its outputs/*_defended.npy); returns and saves
    evaluation.json with, per attack, metrics for "none", "naive" and "aware"."""
    run = RunDir(run_dir)
    cfg, s = run.config(), run.splits()
    known = record_positions(run, s.adversary_members, s.adversary_nonmembers)
    scored = record_positions(run, s.eval_members, s.eval_nonmembers)
    lab_in, lab_out = run.output("members_labels"), run.output("nonmembers_labels")

    def records(rows, suffix):
        r_in, r_out = rows
        return (run.output("members" + suffix)[r_in], lab_in[r_in], run.output("nonmembers" + suffix)[r_out],
                lab_out[r_out])

    raw_known, def_known = records(known, ""), records(known, "_defended")
    raw_scored, def_scored = records(scored, ""), records(scored, "_defended")
    results, scores = {}, {}
    for name in attacks or list(ATTACKS):
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
        started = time.perf_counter()
        make = lambda: ATTACKS[name](epochs, cfg.seed + 2, cfg.device)  # noqa: E731
        naive, aware = make().fit(*raw_known), make().fit(*def_known)
        results[name], scores[name] = {}, {}
        for setting, attack, recs in [("none", naive, raw_scored), ("naive", naive, def_scored),
                                      ("aware", aware, def_scored)]:
            s_in, s_out = attack.score(recs[0], recs[1]), attack.score(recs[2], recs[3])
            results[name][setting] = attack.evaluate(*recs)
            results[name][setting]["per_class_accuracy"] = {
                c: m["accuracy"] for c, m in per_class_metrics(s_in, recs[1].numpy(), s_out, recs[3].numpy(),
                                                               threshold=attack.threshold).items()}
            scores[name][setting] = (s_in, s_out)
        if log:
            log(f"{name}: {time.perf_counter() - started:.1f} s")
    out = {"dataset": cfg.dataset, "eps": cfg.step_size(), "scored_members": len(s.eval_members),
           "scored_nonmembers": len(s.eval_nonmembers), "attacks": results}
    run.write_json("evaluation.json", out)
    from .report import write_report

    write_report(run.path, out, scores)
    return out


def format_evaluation(ev: dict) -> str:
    lines = [f"{ev['dataset']}: attacks on {ev['scored_members']} members + {ev['scored_nonmembers']} non-members "
             f"(accuracy / AUC, AUC counted as leakage below 0.5 too)",
             f"{'attack':18s}{'no defense':>16s}{'AEPPT, naive':>16s}{'AEPPT, aware':>16s}"]
    for name, r in ev["attacks"].items():
        cell = lambda m: f"{100 * m['accuracy']:.1f}% / {100 * m['auc_leak']:.1f}%"  # noqa: E731
        lines.append(f"{name:18s}{cell(r['none']):>16s}{cell(r['naive']):>16s}{cell(r['aware']):>16s}")
    return "\n".join(lines)
