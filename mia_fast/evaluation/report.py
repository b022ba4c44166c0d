"""The evaluation report: evaluation.md and a self-contained evaluation.html (figures embedded) beside
evaluation.json, with the figures as PNG files."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402

FIGURES = {"roc.png": "ROC curves (log-log)", "per_class_cdf.png": "Per-class accuracy, precision, recall (CDF)",
           "step_size.png": "Step-size sweep (Tables 3-4)",
           "attacker_loss.png": "Adversary's loss during generation (Fig. 5)"}


def settings(label: str) -> list:
    """(setting, its name in reports, line style) for a defense named ``label``."""
    return [("none", "no defense", "-"), ("naive", f"{label}, naive attacker", ":"),
            ("aware", f"{label}, defense-aware", "--")]


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def roc_figure(scores: dict, path: Path, title: str, label: str) -> None:
    """ROC curves on log-log axes (low false-positive rates matter for MIA), one panel per setting."""
    from sklearn.metrics import roc_curve

    panels = settings(label)
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.3), sharey=True)
    for ax, (setting, label, _) in zip(axes, panels):
        for i, (name, by_setting) in enumerate(scores.items()):
            s_in, s_out = by_setting[setting]
            fpr, tpr, _ = roc_curve(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out])
            ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), lw=1.3, label=name, color=plt.cm.tab20(i % 20),
                    linestyle="-" if i < 10 else "--")
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate", title=label)
    axes[0].set_ylabel("true positive rate")
    axes[-1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(title)
    _save(fig, path)


def cdf_figure(curves: list, attack: str, path: Path, title: str) -> None:
    """Empirical CDF over classes of per-class accuracy, precision and recall (the paper's Fig. 4/7/8).
    ``curves``: (label, line style, {metric: {class: value}}) per line."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, metric in zip(axes, ("accuracy", "precision", "recall")):
        for label, style, per_class in curves:
            values = np.sort(list(per_class[metric].values()))
            if len(values):
                ax.step(values, np.arange(1, len(values) + 1) / len(values), style, where="post", label=label)
        ax.axvline(0.5, color="grey", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"{attack} {metric} per class")
    axes[0].set_ylabel("fraction of classes")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def per_class_cdf_figure(evaluation: dict, attack: str, path: Path, title: str) -> None:
    """`cdf_figure` of one attack of an evaluation, one line per setting."""
    by = evaluation["attacks"][attack]
    cdf_figure([(label, style, {m: by[setting][f"per_class_{m}"] for m in ("accuracy", "precision", "recall")})
                for setting, label, style in settings(evaluation["defense"]["name"])], attack, path, title)


def step_size_figure(rows: list, path: Path, title: str) -> None:
    eps = [r["eps"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    left.plot(eps, [r["mean_l1"] for r in rows], "o-")
    left.set(xlabel="step size eps", ylabel="mean L1 perturbation")
    right.plot(eps, [r["mim0_accuracy"] for r in rows], "o-", label="MIM0 (naive) accuracy")
    right.plot(eps, [r["mim0_auc_leak"] for r in rows], "o:", label="MIM0 (naive) AUC leak")
    right.plot(eps, [r["aware_confidence_accuracy"] for r in rows], "s--", label="confidence (aware) accuracy")
    right.axhline(0.5, color="grey", lw=0.8)
    right.set(xlabel="step size eps", ylabel="inference accuracy / AUC", ylim=(0.3, 1.0))
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    fig.suptitle(title)
    _save(fig, path)


def attacker_loss_figure(curve: dict, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(curve["iteration"], curve["loss"], "o-", ms=3)
    ax.set(xlabel="iteration of Algorithm 1", ylabel="adversary's MIM0 loss (BCE)", title=title)
    _save(fig, path)


def _as_images(x: np.ndarray) -> np.ndarray:
    """Records as displayable images: [N, C, H, W] -> [N, H, W(, C)]; flat records of a square size (the
    8x8 digits) -> [N, s, s]; others -> [N, 1, D] strips."""
    if x.ndim == 4:
        return x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)
    flat = x.reshape(len(x), -1)
    side = int(round(flat.shape[1] ** 0.5))
    return flat.reshape(len(x), side, side) if side * side == flat.shape[1] else flat[:, None, :]


def protected_figure(originals: np.ndarray, protected: np.ndarray, distances: np.ndarray, path: Path,
                     title: str) -> None:
    """Originals (top row) above their protected copies (bottom row, with each copy's distance): the
    layout of Bai et al.'s Fig. 3."""
    a, b = _as_images(originals), _as_images(protected)
    n = len(a)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.2), squeeze=False)
    for i in range(n):
        for row, images in enumerate((a, b)):
            ax = axes[row, i]
            ax.imshow(np.clip(images[i], 0, 1), cmap="gray" if images[i].ndim == 2 else None, vmin=0, vmax=1,
                      aspect="auto" if images[i].shape[0] == 1 else "equal")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, i].set_xlabel(f"d = {distances[i]:.3g}", fontsize=8)
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("uploaded")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _pct(v) -> str:
    return f"{100 * v:.1f}%"


METRIC_COLUMNS = [("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("auc", "AUC"),
                  ("auc_correct", "AUC, correctly classified"), ("auc_misclassified", "AUC, misclassified"),
                  ("advantage", "advantage"), ("tpr_at_1%_fpr", "TPR @ 1% FPR"),
                  ("tpr_at_0.1%_fpr", "TPR @ 0.1% FPR"), ("tpr_at_0%_fpr", "TPR @ 0% FPR")]


def metric_cells(m: dict) -> list:
    return [f"{m.get(key, float('nan')):.3f}" for key, _ in METRIC_COLUMNS]


def _tables(ev: dict) -> list:
    """(heading, intro, header, rows) of every table in the report."""
    label = ev["defense"]["name"]
    header = ["attack", "setting", *(name for _, name in METRIC_COLUMNS)]
    rows = [[name, text, *metric_cells(by[setting])] for name, by in ev["attacks"].items()
            for setting, text, _ in settings(label)]
    tables = [("Attacks", f"Scored on records the attacker did not know. \"naive\": fitted on undefended data (the "
               f"paper's adversary); \"defense-aware\": fitted on data defended by {label} (the deployed answers for "
               "its known records, or its shadow outputs defended with its own copy of the defense). An AUC below "
               "0.5 is leakage too. The AUC among correctly classified records is the leakage beyond the label; "
               f"the gap attack's floor is {_pct(ev['gap_floor'])}.", header, rows)]
    d = ev["defense"]
    t, p = d["target"], d["perturbation"]
    tables.append(("Target model and perturbation", f"{label}: {d['params']}", ["", "without defense", f"with {label}"], [
        ["train accuracy", _pct(t["train_accuracy"]["without"]), _pct(t["train_accuracy"]["with"])],
        ["test accuracy", _pct(t["test_accuracy"]["without"]), _pct(t["test_accuracy"]["with"])],
        ["mean L1 perturbation", "-", f"{p['mean_l1']:.4f}"], ["label flips", "-", str(p["label_flips"])]]))
    if "adaptive" in ev:
        tables.append((f"Adaptive attacks on {label}", "MIM0 in every case; scored on defended outputs.",
                       ["attack", *header[2:]], [[name, *metric_cells(m)] for name, m in ev["adaptive"].items()]))
    if "step_size_sweep" in ev:
        tables.append(("Step-size sweep (Tables 3-4)", "",
                       ["eps", "mean L1", "MIM0 accuracy", "MIM0 precision", "MIM0 recall", "MIM0 AUC leak",
                        "aware confidence accuracy"],
                       [[f"{r['eps']:.3g}", f"{r['mean_l1']:.4f}", _pct(r["mim0_accuracy"]), _pct(r["mim0_precision"]),
                         _pct(r["mim0_recall"]), _pct(r["mim0_auc_leak"]), _pct(r["aware_confidence_accuracy"])]
                        for r in ev["step_size_sweep"]]))
    return tables


def _intro(ev: dict) -> str:
    return (f"Defense {ev['defense']['name']}; the attacker knows {ev['known_members']} members and "
            f"{ev['known_nonmembers']} non-members; scored on {ev['scored_members']} + {ev['scored_nonmembers']} "
            "others.")


def markdown_tables(tables: list) -> list:
    out = []
    for heading, intro, header, rows in tables:
        out += ["", f"## {heading}", ""] + ([intro, ""] if intro else [])
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def html_tables(tables: list) -> list:
    e = html.escape
    body = []
    for heading, intro, header, rows in tables:
        body += [f"<h2>{e(heading)}</h2>"] + ([f"<p>{e(intro)}</p>"] if intro else [])
        body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    return body


def html_page(title: str, body: list, figures: dict, folder: Path) -> str:
    """A self-contained page: ``body`` (HTML snippets), then ``figures`` {file: caption} embedded as data URIs."""
    e = html.escape
    body = list(body) + (["<h2>Figures</h2>"] if figures else [])
    for f, caption in figures.items():
        data = base64.b64encode((folder / f).read_bytes()).decode("ascii")
        body.append(f"<figure><img alt=\"{e(caption)}\" src=\"data:image/png;base64,{data}\">"
                    f"<figcaption>{e(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _markdown(ev: dict, figures: list) -> str:
    out = [f"# Membership-inference evaluation: {ev['dataset']}", "", _intro(ev)] + markdown_tables(_tables(ev))
    out += ["", "## Figures", ""] + [f"![{FIGURES[f]}]({f})\n" for f in figures]
    out += ["Attacks: " + "; ".join(f"**{k}**: {v}" for k, v in ev["descriptions"].items()) + ".", "",
            "Every number: evaluation.json."]
    return "\n".join(out) + "\n"


def _html(ev: dict, figures: list, run_dir: Path) -> str:
    e = html.escape
    body = [f"<h1>Membership-inference evaluation: {e(ev['dataset'])}</h1>", f"<p>{e(_intro(ev))}</p>"]
    body += html_tables(_tables(ev))
    body.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in ev["descriptions"].items()) + "</ul>")
    return html_page(f"mia-fast: {ev['dataset']}", body, {f: FIGURES[f] for f in figures}, run_dir)


def write_report(run_dir, evaluation: dict, scores: dict) -> None:
    """Figures (PNG), evaluation.md and a self-contained evaluation.html in ``run_dir``."""
    run_dir = Path(run_dir)
    name = evaluation["dataset"]
    figures = []
    if scores:
        roc_figure(scores, run_dir / "roc.png", f"{name}: membership attacks (ROC, log-log)",
                   evaluation["defense"]["name"])
        cdf_attack = "mim0" if "mim0" in evaluation["attacks"] else next(iter(evaluation["attacks"]))
        per_class_cdf_figure(evaluation, cdf_attack, run_dir / "per_class_cdf.png", f"{name}: {cdf_attack} per class")
        figures += ["roc.png", "per_class_cdf.png"]
    if "step_size_sweep" in evaluation:
        step_size_figure(evaluation["step_size_sweep"], run_dir / "step_size.png", f"{name}: AEPPT step size")
        attacker_loss_figure(evaluation["attacker_loss"], run_dir / "attacker_loss.png",
                             f"{name}: adversary's loss during AEPPT")
        figures += ["step_size.png", "attacker_loss.png"]
    with atomic_path(run_dir / "evaluation.md") as tmp:
        tmp.write_text(_markdown(evaluation, figures))
    page = _html(evaluation, figures, run_dir)
    with atomic_path(run_dir / "evaluation.html") as tmp:
        tmp.write_text(page)
