"""The evaluation report: evaluation.md beside evaluation.json, with two figures (PNG)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ..io import atomic_path  # noqa: E402

SETTINGS = [("none", "no defense", "-"), ("naive", "AEPPT, naive attacker", ":"), ("aware", "AEPPT, defense-aware", "--")]


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def roc_figure(scores: dict, path: Path, title: str) -> None:
    """ROC curves on log-log axes (low false-positive rates matter for MIA), one panel per setting."""
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(13, 4.3), sharey=True)
    for ax, (setting, label, _) in zip(axes, SETTINGS):
        for name, by_setting in scores.items():
            s_in, s_out = by_setting[setting]
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
            ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), lw=1.3, label=name)
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate", title=label)
    axes[0].set_ylabel("true positive rate")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    _save(fig, path)


def per_class_cdf_figure(evaluation: dict, attack: str, path: Path, title: str) -> None:
    """Empirical CDF over classes of the attack's per-class inference accuracy (the paper's Fig. 4/7/8)."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for setting, label, style in SETTINGS:
        acc = np.sort(list(evaluation["attacks"][attack][setting]["per_class_accuracy"].values()))
        if len(acc):
            ax.step(acc, np.arange(1, len(acc) + 1) / len(acc), style, where="post", label=label)
    ax.axvline(0.5, color="grey", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"{attack} inference accuracy per class", ylabel="fraction of classes",
           title=title)
    ax.legend(fontsize=8)
    _save(fig, path)


def write_report(run_dir, evaluation: dict, scores: dict) -> None:
    run_dir = Path(run_dir)
    name = evaluation["dataset"]
    roc_figure(scores, run_dir / "roc.png", f"{name}: membership attacks (ROC, log-log)")
    cdf_attack = "mim0" if "mim0" in evaluation["attacks"] else next(iter(evaluation["attacks"]))
    per_class_cdf_figure(evaluation, cdf_attack, run_dir / "per_class_cdf.png", f"{name}: {cdf_attack} per class")
    rows = ["| attack | setting | accuracy | precision | recall | AUC | advantage | TPR @ 1% FPR | TPR @ 0.1% FPR |",
            "|---|---|---|---|---|---|---|---|---|"]
    for attack, by_setting in evaluation["attacks"].items():
        for setting, label, _ in SETTINGS:
            m = by_setting[setting]
            rows.append(f"| {attack} | {label} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                        f"{m['auc']:.3f} | {m['advantage']:.3f} | {m['tpr_at_1%_fpr']:.3f} | {m['tpr_at_0.1%_fpr']:.3f} |")
    text = "\n".join([
        f"# Membership-inference evaluation: {name}",
        "",
        f"AEPPT eps = {evaluation['eps']:g}; scored on {evaluation['scored_members']} members and "
        f"{evaluation['scored_nonmembers']} non-members the attacker did not know. \"naive\": the attack is fitted on "
        "undefended outputs of its known records (the paper's adversary); \"defense-aware\": on the defended outputs "
        "the deployed model returns for them. An AUC below 0.5 is leakage too (flip the score).",
        "",
        *rows,
        "",
        "![ROC curves](roc.png)",
        "",
        f"![Per-class {cdf_attack} accuracy](per_class_cdf.png)",
        "",
        "Numbers: evaluation.json.",
    ])
    with atomic_path(run_dir / "evaluation.md") as tmp:
        tmp.write_text(text + "\n")
