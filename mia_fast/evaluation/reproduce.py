"""Named experiments of the AEPPT paper (Xue et al.), run on any dataset, printed beside the paper's
numbers when the dataset is one the paper used (CIFAR-100, Purchase-100).

    table2      target accuracy and MIM0 with and without AEPPT (Table 2, sec. 5.3)
    step-size   eps vs L1 size vs MIM0 inference accuracy (Tables 3-4, Fig. 5)
    adversary   MIM0 for adversaries knowing 1/4, 1/2, 3/4 of the data, per-class CDFs (Fig. 7, sec. 5.6)
    mims        MIM1, MIM2, MIM3 beside MIM0, per-class CDFs (Tables 6-7, Fig. 8, sec. 5.7)
    adaptive    flip, rounding, adversarial-training attacks, plus repeated-query averaging (Table 8)
    classes     target and MIM0 for 2, 10, 20, 50, 100 output classes (Table 5, sec. 5.5)
    comparison  rounding (r = 0.001, 0.01), dropout, adversarial regularization and AEPPT side by side
                (Fig. 9, sec. 5.9), and Bai et al.'s Table 3 rows for min-max and DP-SGD at epsilon 50

The paper's class sweep re-clusters the raw Purchase records into k classes; those records are not
published, so ``classes`` merges the dataset's classes into k (label mod k) instead: the same question
(does AEPPT hold as the number of classes grows?), on a different labelling than the paper's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from ..attacks import NNAttack
from ..checkpoint import checkpoint_file, load_model
from ..data import load_dataset
from ..pipeline import Config, RunDir, run_demo
from . import EXPERIMENTS
from .battery import evaluate_run, measure, run_adaptive
from .diagnostics import step_size_sweep
from .report import cdf_figure
from .threat import Deployment, Options, ThreatModel

#: The paper's numbers (inference accuracy etc. in %), by experiment and dataset.
PAPER = {
    "table2": {"cifar100": {"train_without": 96.1, "train_with": 96.0, "test_without": 50.2, "test_with": 50.2},
               "purchase100": {"train_without": 99.3, "train_with": 99.2, "test_without": 79.7, "test_with": 79.4}},
    "step-size": {"cifar100": [(0, 0, 58.7), (7e-4, 0.1842, 52.2), (8e-4, 0.2208, 51.4), (9e-4, 0.2637, 50.3),
                               (1e-3, 0.2961, 49.1)],
                  "purchase100": [(0, 0, 76.0), (1e-5, 0.0485, 74.2), (1.5e-5, 0.0736, 61.7), (2e-5, 0.0868, 50.6),
                                  (2.5e-5, 0.0882, 47.4)]},
    "mims": {"purchase100": {"mim1": (67, 51), "mim2": (71, 51), "mim3": (64, 53)}},  # accuracy without / with
    "adaptive": {"cifar100": {"flip": 48.0, "rounding": 49.71, "adversarial_training": 50.79},
                 "purchase100": {"flip": 49.0, "rounding": 40.46, "adversarial_training": 62.90}},
    # classes: target train, test accuracy; MIM0 accuracy, precision, recall without; the same with AEPPT
    "classes": {"purchase100": {2: (99.3, 98.9, 49.5, 49.5, 47.9, 50.8, 50.8, 50.5),
                                10: (99.6, 95.2, 54.5, 52.4, 97.2, 49.6, 49.4, 33.0),
                                20: (99.8, 93.0, 61.1, 57.3, 88.0, 52.7, 53.4, 42.3),
                                50: (99.4, 86.6, 69.2, 62.0, 99.4, 48.0, 47.2, 33.0),
                                100: (99.3, 79.7, 76.0, 68.0, 98.5, 50.6, 51.7, 17.1)}},
}
# comparison: Fig. 9 is a bar chart; the text gives MIM0 accuracy without / with rounding r = 0.01 only
PAPER["comparison"] = {"cifar100": {"rounding r=0.01": (63.7, 58.3)}, "purchase100": {"rounding r=0.01": (76.0, 60.0)}}
# Bai et al. Table 3 (CIFAR-10, epoch 50): train, test, inference accuracy
PAPER["bai-table3"] = {"cifar10": {"min-max (advreg)": (68.6, 62.7, 52.9), "dp-sgd epsilon=50": (1.2, 1.0, 50.0)}}
PAPER_CLASSES = (2, 10, 20, 50, 100)
COMPARISON_ATTACKS = ("mim0", "gap", "shokri", "confidence")
Log = Callable[[str], None]


def _pct(v: float) -> str:
    return f"{100 * v:6.1f}%"


def _three(m: dict) -> str:
    return " / ".join(_pct(m[k]).strip() for k in ("accuracy", "precision", "recall"))


def _paper(experiment: str, dataset: str):
    return PAPER.get(experiment, {}).get(dataset)


def _run_mim0(run_dir: Path) -> NNAttack:
    """The run's own adversary MIM0 (mim0.safetensors, trained by the demo's attack stage)."""
    return NNAttack.from_model(load_model(checkpoint_file(run_dir, "mim0"), "attack-mim")[0])


def _mim0_per_class(run_dir: Path) -> dict:
    """Per-class accuracy, precision, recall of a run's MIM0 on the defended scored records."""
    m, _ = measure(_run_mim0(run_dir), Deployment(ThreatModel(run_dir), "aeppt").served("scored"))
    return {key: m[f"per_class_{key}"] for key in ("accuracy", "precision", "recall")}


def _table2(run: RunDir, results: dict, options: Options, log: Log, engine=None) -> tuple:
    t, m = results["target"], results["mim0"]
    paper = _paper("table2", results["dataset"])
    rows = [("target train accuracy", t["train_accuracy"]["without"], t["train_accuracy"]["with"], "train"),
            ("target test accuracy", t["test_accuracy"]["without"], t["test_accuracy"]["with"], "test")]
    lines = [f"{'':24s}{'without':>9s}{'with AEPPT':>12s}" + ("   paper: without / with" if paper else "")]
    for label, a, b, key in rows:
        extra = f"   {paper[key + '_without']:.1f}% / {paper[key + '_with']:.1f}%" if paper else ""
        lines.append(f"{label:24s}{_pct(a):>9s}{_pct(b):>12s}{extra}")
    for key in ("accuracy", "precision", "recall"):
        lines.append(f"{'MIM0 ' + key:24s}{_pct(m['without'][key]):>9s}{_pct(m['with'][key]):>12s}")
    return lines, {"target": t, "mim0": m}


def _step_size(run: RunDir, results: dict, options: Options, log: Log, engine=None) -> tuple:
    threat = ThreatModel(run.path, options, log=log, engine=engine)
    rows = step_size_sweep(threat, Deployment(threat, "aeppt"), _run_mim0(run.path))
    lines = [f"{'eps':>10s}{'mean L1':>10s}{'MIM0 acc':>10s}{'aware conf. acc':>17s}"]
    lines += [f"{r['eps']:10.3g}{r['mean_l1']:10.4f}{_pct(r['mim0_accuracy']):>10s}"
              f"{_pct(r['aware_confidence_accuracy']):>17s}" for r in rows]
    paper = _paper("step-size", results["dataset"])
    if paper:
        lines += ["paper (eps, L1, MIM0 accuracy): " + "; ".join(f"{e:g}, {l1:.4f}, {a:.1f}%" for e, l1, a in paper)]
    return lines, {"step_size_sweep": rows}


def _mims(run: RunDir, results: dict, options: Options, log: Log, engine=None) -> tuple:
    ev = evaluate_run(run.path, attacks=["mim0", "mim1", "mim2", "mim3"], adaptive=False, sweep=False,
                      options=options, log=log, engine=engine)
    paper = _paper("mims", results["dataset"]) or {}
    lines = [f"{'':6s}{'no defense: acc / prec / recall':>34s}{'AEPPT naive: acc / prec / recall':>36s}"
             f"{'AEPPT aware: acc':>18s}" + ("   paper acc without / with" if paper else "")]
    for name, r in ev["attacks"].items():
        cells = [_three(r[s]) for s in ("none", "naive")]
        extra = f"   {paper[name][0]}% / {paper[name][1]}%" if name in paper else ""
        lines.append(f"{name:6s}{cells[0]:>34s}{cells[1]:>36s}{_pct(r['aware']['accuracy']):>18s}{extra}")
    metrics = ("accuracy", "precision", "recall")
    curves = [(f"{name}, with AEPPT", "-", {m: r["naive"][f"per_class_{m}"] for m in metrics})
              for name, r in ev["attacks"].items()]
    cdf_figure(curves, "attack", run.path / "mims_cdf.png", f"{results['dataset']}: MIM0-MIM3 against AEPPT (Fig. 8)")
    lines.append(f"figure: {run.path / 'mims_cdf.png'} (and the full report: evaluation.html)")
    return lines, {"attacks": ev["attacks"]}


def _adaptive(run: RunDir, results: dict, options: Options, log: Log, engine=None) -> tuple:
    threat = ThreatModel(run.path, options, log=log, engine=engine)
    out = run_adaptive(threat, Deployment(threat, "aeppt"))
    paper = _paper("adaptive", results["dataset"]) or {}
    lines = [f"{'':22s}{'accuracy':>10s}{'AUC leak':>10s}" + ("   paper accuracy" if paper else "")]
    for name, m in out.items():
        extra = f"   {paper[name]:.2f}%" if name in paper else ""
        lines.append(f"{name:22s}{_pct(m['accuracy']):>10s}{_pct(m['auc_leak']):>10s}{extra}")
    return lines, {"adaptive": out}


def _comparison_points() -> list:
    from ..defenses import DefenseSpec
    from .compare import Point

    return [Point(DefenseSpec("rounding r=0.001", output="rounding"), {"rounding": {"decimals": 3}}),
            Point(DefenseSpec("rounding r=0.01", output="rounding"), {"rounding": {"decimals": 2}}),
            Point(DefenseSpec("dropout", training="dropout")),
            Point(DefenseSpec("min-max (advreg)", training="advreg")),
            Point(DefenseSpec("aeppt", output="aeppt")),
            Point(DefenseSpec("dp-sgd epsilon=50", training="dp-sgd"), {"dp-sgd": {"epsilon": 50.0}})]


def _comparison(run: RunDir, results: dict, options: Options, log: Log, engine=None) -> tuple:
    from .compare import compare_run, rows

    cmp = compare_run(run.path, _comparison_points(), attacks=list(COMPARISON_ATTACKS), adaptive=False,
                      options=options, log=log, engine=engine)
    by_name = {r["defense"]: r for r in rows(cmp)}
    paper = _paper("comparison", results["dataset"]) or {}
    lines = ["Fig. 9 shape: MIM0 naive = fitted on undefended outputs (the AEPPT adversary; for a training "
             "defense the target it queries is the defended one); aware = fitted on what the defense serves",
             f"{'defense':20s}{'train acc':>10s}{'test acc':>10s}{'MIM0 naive: acc / prec / recall':>34s}"
             f"{'MIM0 aware: acc / prec / recall':>34s}" + ("   paper MIM0 acc without / with" if paper else "")]
    for name in ["none", *(p.label for p in _comparison_points()[:5])]:
        r = by_name[name]
        naive = r["mim0_naive"] or r["mim0_aware"]
        extra = f"   {paper[name][0]}% / {paper[name][1]}%" if name in paper else ""
        lines.append(f"{name:20s}{_pct(r['train_accuracy']):>10s}{_pct(r['test_accuracy']):>10s}"
                     f"{_three(naive):>34s}{_three(r['mim0_aware']):>34s}{extra}")
    table3 = _paper("bai-table3", results["dataset"]) or {}
    lines += ["Bai et al. Table 3 rows: train / test accuracy and the best aware attack's accuracy (of "
              + ", ".join(COMPARISON_ATTACKS) + ")",
              f"{'defense':20s}{'train acc':>10s}{'test acc':>10s}{'inference acc':>15s}{'attack':>12s}{'epsilon':>9s}"
              + ("   paper (CIFAR-10): train / test / inference" if table3 else "")]
    for name in ("none", "min-max (advreg)", "dp-sgd epsilon=50"):
        r = by_name[name]
        extra = "   %.1f%% / %.1f%% / %.1f%%" % table3[name] if name in table3 else ""
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.1f}"
        lines.append(f"{name:20s}{_pct(r['train_accuracy']):>10s}{_pct(r['test_accuracy']):>10s}"
                     f"{_pct(r['best_aware_accuracy']):>15s}{r['best_aware_attack']:>12s}{eps:>9s}{extra}")
    lines.append(f"figure and tables: {run.path / 'compare.html'} (numbers: compare.json)")
    return lines, {"rows": rows(cmp)}


def reproduce(experiment: str, cfg: Config, run_dir, *, options: Optional[Options] = None, log: Log = print,
              progress: bool = False, params: Optional[dict] = None, engine=None) -> tuple:
    """Run ``experiment`` (one of `EXPERIMENTS`) with ``cfg`` under ``run_dir``; returns (printable lines,
    JSON-able numbers) and writes reproduce-EXPERIMENT.json there. ``params``: hyperparameters of the
    input-perturbation settings of the bai-* experiments (`mia_fast.evaluation.bai`). Shadow and simulator
    models train on ``engine`` (`mia_fast.distributed`; default: this process)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    cfg, options = cfg.resolved(), options or Options()
    root = Path(run_dir)
    if experiment.startswith("bai-"):
        from .bai import run_bai

        return run_bai(experiment, cfg, root, params=params, log=log, progress=progress, engine=engine)
    if experiment == "classes":
        total = load_dataset(cfg.dataset, cfg.data_dir).num_classes
        paper = _paper("classes", cfg.dataset) or {}
        lines = [f"{'classes':8s}{'target train / test':>20s}{'MIM0 without: acc / prec / recall':>36s}"
                 f"{'with AEPPT: acc / prec / recall':>34s}"]
        numbers = {}
        for k in sorted({k for k in PAPER_CLASSES if k < total} | {total}):
            res = run_demo(dataclasses.replace(cfg, classes=k), root / f"classes-{k}", log=log, progress=progress)
            t, m = res["target"], res["mim0"]
            accs = f"{_pct(t['train_accuracy']['without']).strip()} / {_pct(t['test_accuracy']['without']).strip()}"
            lines.append(f"{k:<8d}{accs:>20s}{_three(m['without']):>36s}{_three(m['with']):>34s}")
            if k in paper:
                lines.append(f"{'  paper':8s}{'%.1f%% / %.1f%%' % paper[k][:2]:>20s}"
                             f"{'%.1f%% / %.1f%% / %.1f%%' % paper[k][2:5]:>36s}"
                             f"{'%.1f%% / %.1f%% / %.1f%%' % paper[k][5:]:>34s}")
            numbers[str(k)] = {"target": t, "mim0": m}
    elif experiment == "adversary":
        lines = [f"{'known share':12s}{'MIM0 without: acc / prec / recall':>36s}"
                 f"{'with AEPPT: acc / prec / recall':>34s}"]
        numbers, curves = {}, []
        for fraction in (0.25, 0.5, 0.75):
            res = run_demo(dataclasses.replace(cfg, adversary_fraction=fraction), root / f"adversary-{fraction:g}",
                           log=log, progress=progress)
            m = res["mim0"]
            cells = [_three(m[s]) for s in ("without", "with")]
            lines.append(f"{fraction:<12g}{cells[0]:>36s}{cells[1]:>34s}")
            numbers[str(fraction)] = m
            curves.append((f"knows {fraction:g}, with AEPPT", "-", _mim0_per_class(root / f"adversary-{fraction:g}")))
        cdf_figure(curves, "MIM0", root / "adversary_cdf.png", f"{cfg.dataset}: adversaries knowing 1/4, 1/2, 3/4")
        lines.append(f"figure: {root / 'adversary_cdf.png'}")
    else:
        results = run_demo(cfg, root, log=log, progress=progress)
        step = {"table2": _table2, "step-size": _step_size, "mims": _mims, "adaptive": _adaptive,
                "comparison": _comparison}[experiment]
        lines, numbers = step(RunDir(root), results, options, log, engine)
    header = f"{experiment} on {cfg.dataset} (eps {cfg.eps:g}, T {cfg.iters}, seed {cfg.seed})"
    RunDir(root, create=True).write_json(f"reproduce-{experiment}.json",
                                         {"experiment": experiment, "config": dataclasses.asdict(cfg), **numbers})
    return [header, *lines], numbers
