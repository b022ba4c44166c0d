"""`mia-fast compare`: several output defenses on the same run, the same attacks and the same attacker,
side by side. The shadow models, the undefended attacks and everything else that does not depend on the
defense are computed once (and the shadow models cached in the run directory); each defense is deployed
(cached in defenses/) and attacked naively and defense-aware. Writes compare.json, compare.md, a
self-contained compare.html and the privacy-utility figure compare.png, with the gap floor drawn: no
output defense that keeps the labels can take an attacker below it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402
from .battery import evaluate_defense, resolve_attacks, run_attack, run_header, summarize  # noqa: E402
from .report import _pct, _save, html_page, html_tables, markdown_tables  # noqa: E402
from .threat import Deployment, Options, ThreatModel  # noqa: E402

FIGURE = "compare.png"


def _undefended(threat: ThreatModel, names) -> dict:
    attacks = {name: {"aware": run_attack(threat, name)[0]["none"]} for name in names}
    return {"attacks": attacks, "summary": summarize({"attacks": attacks}, run_header(threat, names)["gap_floor"])}


def compare_run(run_dir, defenses: Sequence[str], *, params: Optional[Dict[str, dict]] = None, attacks=None,
                adaptive: bool = True, options: Optional[Options] = None, log: Optional[Callable[[str], None]] = None,
                progress: bool = False) -> dict:
    """Evaluate every defense in ``defenses`` (registry names; ``params``: {name: hyperparameters}) on the
    run and write the comparison files there. Returns the comparison (what compare.json holds)."""
    if not defenses:
        raise ValueError("defenses: name at least one output defense")
    if len(set(defenses)) != len(defenses):
        raise ValueError(f"defenses: each defense once, got {', '.join(defenses)}")
    params = params or {}
    unknown = set(params) - set(defenses)
    if unknown:
        raise ValueError(f"--param for {sorted(unknown)[0]!r}, which is not among the compared defenses")
    options = options or Options()
    names = resolve_attacks(attacks, options)
    threat = ThreatModel(run_dir, options, log=log, progress=progress)
    deployments = [Deployment(threat, name, params.get(name)) for name in defenses]  # bad names fail here, early
    started = time.perf_counter()
    out = {**run_header(threat, names), "undefended": _undefended(threat, names), "defenses": {}}
    for deployment in deployments:
        t0 = time.perf_counter()
        out["defenses"][deployment.name], _ = evaluate_defense(threat, deployment, names, adaptive=adaptive,
                                                               sweep=False)
        out["defenses"][deployment.name]["seconds"] = time.perf_counter() - t0
        threat.log(f"{deployment.name}: {time.perf_counter() - t0:.0f} s")
    out["seconds"] = time.perf_counter() - started
    threat.run.write_json("compare.json", out)
    write_comparison(threat.run.path, out)
    return out


def rows(cmp: dict) -> list:
    """One row per point of the comparison: the undefended target, then each defense."""
    t = cmp["target"]
    un = cmp["undefended"]
    mim0 = un["attacks"].get("mim0", {}).get("aware")
    out = [{"defense": "none", "train_accuracy": t["train_accuracy"], "test_accuracy": t["test_accuracy"],
            "mean_l1": 0.0, "label_flips": 0, "mim0_naive": mim0, "mim0_aware": mim0, **un["summary"]}]
    for name, ev in cmp["defenses"].items():
        d = ev["defense"]
        mim0 = ev["attacks"].get("mim0", {})
        out.append({"defense": name, "train_accuracy": d["target"]["train_accuracy"]["with"],
                    "test_accuracy": d["target"]["test_accuracy"]["with"], "mean_l1": d["perturbation"]["mean_l1"],
                    "label_flips": d["perturbation"]["label_flips"], "mim0_naive": mim0.get("naive"),
                    "mim0_aware": mim0.get("aware"), **ev["summary"]})
    return out


def _three(m: Optional[dict]) -> str:
    return " / ".join(_pct(m[k]) for k in ("accuracy", "precision", "recall")) if m else "-"


def _tables(cmp: dict) -> list:
    table = rows(cmp)
    privacy = ("Privacy and utility", "Best aware attack: the most accurate attack fitted on defended outputs "
               "(every attack in the battery and the adaptive ones); best score attack: the same over the attacks "
               "that read confidence values (label-only attacks, gap and robustness, see only labels, which every "
               "defense here keeps). Beyond the label: the largest AUC among correctly classified records over the "
               "aware score attacks (0.5 = the scores add nothing to the label). "
               f"Gap floor {_pct(cmp['gap_floor'])}: what the label alone gives one query (0.5 + (train - test) / 2).",
               ["defense", "mean L1", "label flips", "test accuracy", "best aware attack", "its accuracy",
                "best score attack", "its accuracy", "over gap floor", "best aware AUC", "TPR @ 0.1% FPR",
                "beyond-label AUC"],
               [[r["defense"], f"{r['mean_l1']:.3f}", str(r["label_flips"]), _pct(r["test_accuracy"]),
                 r["best_aware_attack"], _pct(r["best_aware_accuracy"]), str(r["best_score_attack"]),
                 _pct(r["best_score_accuracy"]), f"{100 * (r['best_score_accuracy'] - r['gap_floor']):+.1f} pts",
                 _pct(r["best_aware_auc"]), f"{r['best_aware_tpr_at_0.1%_fpr']:.3f}",
                 _pct(r["beyond_label_auc"])] for r in table])
    paper = ("The AEPPT paper's comparison shape (sec. 5.9, Fig. 9)", "MIM0 accuracy / precision / recall, fitted "
             "on undefended outputs (naive, the paper's adversary) and on defended ones (aware).",
             ["defense", "target train accuracy", "target test accuracy", "MIM0 naive", "MIM0 aware"],
             [[r["defense"], _pct(r["train_accuracy"]), _pct(r["test_accuracy"]), _three(r["mim0_naive"]),
               _three(r["mim0_aware"])] for r in table])
    attacks = list(cmp["undefended"]["attacks"])
    per_attack = ("Every attack, defense-aware (accuracy / AUC)", "",
                  ["attack", "none", *cmp["defenses"]],
                  [[a, f"{_pct(cmp['undefended']['attacks'][a]['aware']['accuracy'])} / "
                       f"{_pct(cmp['undefended']['attacks'][a]['aware']['auc_leak'])}",
                    *(f"{_pct(ev['attacks'][a]['aware']['accuracy'])} / {_pct(ev['attacks'][a]['aware']['auc_leak'])}"
                      for ev in cmp["defenses"].values())] for a in attacks])
    naive = ("Every attack, naive (accuracy / AUC)", "Fitted on undefended outputs, scoring the defended ones.",
             ["attack", *cmp["defenses"]],
             [[a, *(f"{_pct(ev['attacks'][a]['naive']['accuracy'])} / {_pct(ev['attacks'][a]['naive']['auc_leak'])}"
                    for ev in cmp["defenses"].values())] for a in attacks])
    out = [privacy, paper, per_attack, naive]
    adaptive = [(name, ev["adaptive"]) for name, ev in cmp["defenses"].items() if "adaptive" in ev]
    if adaptive:
        kinds = sorted({k for _, a in adaptive for k in a})
        out.append(("Adaptive attacks (accuracy / AUC)", "", ["defense", *kinds],
                    [[name, *(f"{_pct(a[k]['accuracy'])} / {_pct(a[k]['auc_leak'])}" if k in a else "-" for k in kinds)]
                     for name, a in adaptive]))
    return out


def privacy_utility_figure(cmp: dict, path: Path) -> None:
    """Best aware attack accuracy and beyond-label AUC against mean L1 distortion and against test accuracy,
    with the gap floor drawn; and TPR at 0.1% FPR against L1."""
    table = rows(cmp)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, x_key, x_label in ((axes[0], "mean_l1", "mean L1 distortion"), (axes[1], "test_accuracy",
                                                                              "test accuracy (as served)")):
        for i, r in enumerate(table):
            color = "black" if r["defense"] == "none" else plt.cm.tab10(i % 10)
            ax.scatter(r[x_key], r["best_aware_accuracy"], marker="o", s=50, color=color)
            ax.scatter(r[x_key], r["best_score_accuracy"], marker="s", s=40, color=color)
            if not math.isnan(r["beyond_label_auc"]):
                ax.scatter(r[x_key], r["beyond_label_auc"], marker="^", s=50, color=color)
            ax.annotate(r["defense"], (r[x_key], r["best_aware_accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        ax.axhline(cmp["gap_floor"], color="red", lw=1, ls="--", label=f"gap floor {cmp['gap_floor']:.3f}")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.scatter([], [], marker="o", color="grey", label="best aware attack accuracy (label-only included)")
        ax.scatter([], [], marker="s", color="grey", label="best aware score attack accuracy")
        ax.scatter([], [], marker="^", color="grey", label="beyond-label AUC (correctly classified)")
        ax.set(xlabel=x_label, ylabel="accuracy / AUC", ylim=(0.4, 1.0))
        low, high = ax.get_xlim()
        if high - low < 0.05:  # output defenses barely move test accuracy: keep the axis readable
            middle = (low + high) / 2
            ax.set_xlim(middle - 0.025, middle + 0.025)
        ax.legend(fontsize=7, loc="lower left")
    for i, r in enumerate(table):
        color = "black" if r["defense"] == "none" else plt.cm.tab10(i % 10)
        axes[2].scatter(r["mean_l1"], r["best_aware_tpr_at_0.1%_fpr"], color=color)
        axes[2].annotate(r["defense"], (r["mean_l1"], r["best_aware_tpr_at_0.1%_fpr"]), textcoords="offset points",
                         xytext=(4, 4), fontsize=8)
    axes[2].set(xlabel="mean L1 distortion", ylabel="best aware TPR at 0.1% FPR")
    fig.suptitle(f"{cmp['dataset']}: output defenses against a defense-aware attacker")
    _save(fig, path)


def write_comparison(run_dir, cmp: dict) -> None:
    """compare.png, compare.md and a self-contained compare.html in ``run_dir``."""
    run_dir = Path(run_dir)
    privacy_utility_figure(cmp, run_dir / FIGURE)
    tables = _tables(cmp)
    intro = (f"{cmp['dataset']}: {len(cmp['defenses'])} output defenses against the same attacks. The attacker "
             f"knows {cmp['known_members']} members and {cmp['known_nonmembers']} non-members and is scored on "
             f"{cmp['scored_members']} + {cmp['scored_nonmembers']} others; aware = it knows the defense and its "
             "hyperparameters, runs its own copy fitted on its own shadow data, and fits on defended outputs.")
    caption = "Privacy against utility: best aware attack and beyond-label AUC, with the gap floor"
    md = [f"# Defense comparison: {cmp['dataset']}", "", intro] + markdown_tables(tables)
    md += ["", f"![{caption}]({FIGURE})", "", "Every number: compare.json."]
    with atomic_path(run_dir / "compare.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    page = html_page(f"mia-fast compare: {cmp['dataset']}",
                     [f"<h1>Defense comparison: {cmp['dataset']}</h1>", f"<p>{intro}</p>", *html_tables(tables)],
                     {FIGURE: caption}, run_dir)
    with atomic_path(run_dir / "compare.html") as tmp:
        tmp.write_text(page)


def format_comparison(cmp: dict) -> str:
    """The table `mia-fast compare` prints."""
    lines = [f"{cmp['dataset']}: defense-aware attacks; gap floor {_pct(cmp['gap_floor'])}",
             f"{'defense':14s}{'mean L1':>9s}{'flips':>7s}{'test acc':>10s}{'best aware attack':>24s}"
             f"{'best score attack':>30s}{'TPR@0.1%':>10s}{'beyond label':>14s}"]
    for r in rows(cmp):
        best = f"{r['best_aware_attack']} {_pct(r['best_aware_accuracy'])}"
        score = f"{r['best_score_attack']} {_pct(r['best_score_accuracy'])}"
        lines.append(f"{r['defense']:14s}{r['mean_l1']:9.3f}{r['label_flips']:7d}{_pct(r['test_accuracy']):>10s}"
                     f"{best:>24s}{score:>30s}{r['best_aware_tpr_at_0.1%_fpr']:10.3f}{_pct(r['beyond_label_auc']):>14s}")
    return "\n".join(lines)
