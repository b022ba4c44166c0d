"""`mia-fast compare`: defenses side by side on the same run, the same attacks and the same attacker.

A point of the comparison is an output defense, a training defense, or one of each (``advreg+aeppt``;
``hamp`` = HAMP's training and output step). Everything that does not depend on the defense is computed
once (shadow models cached in the run directory). A training defense's target is trained once on the
run's splits and kept in targets/NAME-HASH/ with its own shadow models, which the attacker trains with
the same defense: every attack on it is defense-aware. An output defense is deployed (cached in
defenses/) and attacked naively and defense-aware. Each point's result is kept in compare/ as soon as it
is done (keyed by the point, the attacks, the attacker's options and the run's fingerprint), so a
comparison that is stopped, or rerun with more points, evaluates only what it has not. Writes compare.json, compare.md, a self-contained
compare.html and the privacy-utility figure compare.png, with the gap floors drawn: no output defense
that keeps the labels can take an attacker below its target's floor 0.5 + (train - test) / 2; only
training lowers it.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..attacks import ATTACKS  # noqa: E402
from ..defenses import COMBINATIONS, DefenseSpec, create_defense, parse_param, parse_spec  # noqa: E402
from ..io import atomic_path  # noqa: E402
from ..version import __version__  # noqa: E402
from ..pipeline import defended_target, defense_key, reference_records  # noqa: E402
from .battery import evaluate_defense, resolve_attacks, run_attack, run_header, summarize  # noqa: E402
from .report import _pct, _save, html_page, html_tables, markdown_tables  # noqa: E402
from .threat import Deployment, Options, ThreatModel  # noqa: E402

FIGURE = "compare.png"
FRONTIER_FIGURE = "compare_frontier.png"


@dataclass(frozen=True)
class Point:
    """One point of a comparison: a `DefenseSpec` and the hyperparameters of its defenses by name."""

    spec: DefenseSpec
    params: Dict[str, dict] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.spec.label


def _point(text: str) -> Point:
    """A point from its text: a spec (`parse_spec`) whose parts may carry their own hyperparameters in
    brackets, ``dp-sgd[epsilon=50;max_grad_norm=2]+aeppt`` (the text, brackets included, is its label)."""
    parts, own = [], {}
    for part in text.strip().split("+"):
        name, bracket, rest = part.strip().partition("[")
        if bracket:
            if not rest.endswith("]"):
                raise ValueError(f"{text}: expected NAME[KEY=VALUE;...], got {part.strip()!r}")
            if name in COMBINATIONS:
                raise ValueError(f"{text}: give {name}'s hyperparameters to its parts "
                                 f"({' + '.join(COMBINATIONS[name])})")
            for pair in filter(None, (p.strip() for p in rest[:-1].split(";"))):
                key, eq, value = pair.partition("=")
                if not eq:
                    raise ValueError(f"{text}: expected KEY=VALUE in brackets, got {pair!r}")
                own.setdefault(name, {})[key.strip()] = parse_param(name, key.strip(), value.strip())
        parts.append(name)
    spec = parse_spec("+".join(parts))
    return Point(DefenseSpec(text.strip(), spec.training, spec.output), own)


def points(defenses: Sequence, params: Optional[Dict[str, dict]] = None) -> List[Point]:
    """`Point`s from texts ("dropout", "advreg+aeppt", "hamp", "dp-sgd[epsilon=50]", see `_point`) or
    Points, with ``params`` ({defense name: hyperparameters}) given to every point that uses that defense
    (a point's own bracketed ones win)."""
    params = params or {}
    out = [d if isinstance(d, Point) else _point(d) for d in defenses]
    if not out:
        raise ValueError("defenses: name at least one defense or combination")
    labels = [p.label for p in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"defenses: each one once, got {', '.join(labels)}")
    used = {n for p in out for n in p.spec.names}
    unknown = sorted(set(params) - used)
    if unknown:
        raise ValueError(f"--param for {unknown[0]!r}, which is not among the compared defenses")
    return [Point(p.spec, {n: {**params.get(n, {}), **p.params.get(n, {})} for n in p.spec.names}) for p in out]


def _undefended(threat: ThreatModel, names) -> dict:
    """Every attack on a target as it is (a training defense's target: its shadow models are trained with
    that defense, so every attack here is aware of it)."""
    attacks = {name: {"aware": run_attack(threat, name)[0]["none"]} for name in names}
    return {"attacks": attacks, "summary": summarize({"attacks": attacks}, run_header(threat, names)["gap_floor"])}


def _training_block(threat: ThreatModel) -> dict:
    meta = threat.run.read_json("target.json")
    keep = ("train_seconds", "epochs_run", "best_epoch", "epsilon", "epsilon_holds", "delta", "noise_multiplier",
            "soft_label_confidence", "reference_records")
    return {"name": threat.cfg.training_defense, "params": threat.cfg.training_params,
            "key": threat.run.path.name, **{k: meta[k] for k in keep if k in meta}}


class _Targets:
    """The base run's attacker, and one per training defense (its target and shadow models trained once,
    in the run's targets/ folder)."""

    def __init__(self, threat: ThreatModel):
        self.base, self.variants = threat, {}

    def __call__(self, point: Point) -> ThreatModel:
        if point.spec.training is None:
            return self.base
        defense = create_defense(point.spec.training, **point.params.get(point.spec.training, {}))
        key = defense_key(defense)
        if key not in self.variants:
            t = self.base
            started = time.perf_counter()
            run = defended_target(t.run, defense, log=t.log, progress=t.progress)
            t.log(f"{defense.name}: target ready in {run.path} ({time.perf_counter() - started:.0f} s)")
            self.variants[key] = ThreatModel(run.path, t.opt, log=t.log, progress=t.progress, engine=t.engine)
        return self.variants[key]


def evaluate_point(targets: _Targets, point: Point, names, *, adaptive: bool = True) -> dict:
    """The battery against one point: its target (trained with its training defense) and, if it has one,
    its output defense deployed there and attacked naively and aware."""
    threat = targets(point)
    if point.spec.output is None:
        ev = _undefended(threat, names)
        acc = threat.accuracy
        ev["defense"] = {"name": point.label, "target": {"train_accuracy": {"with": acc["train"]},
                                                         "test_accuracy": {"with": acc["test"]}},
                         "perturbation": {"mean_l1": 0.0, "label_flips": 0}}
    else:
        deployment = Deployment(threat, point.spec.output, point.params.get(point.spec.output))
        ev, _ = evaluate_defense(threat, deployment, names, adaptive=adaptive, sweep=False)
        ev["defense"]["name"] = point.label
    if point.spec.training is not None:
        ev["defense"]["training"] = _training_block(threat)
    return ev


class _Results:
    """Finished points of a comparison in RUN/compare/, one JSON file each, written atomically. A result is
    reused only for the same point, attacks, attacker options and mia-fast version, on the same target:
    the fingerprint (splits, outputs) and config (which fills in defaults such as AEPPT's eps) of the run
    the point is evaluated on, a training defense's own target for its points."""

    def __init__(self, threat: ThreatModel, names, adaptive: bool, fresh: bool):
        self.folder, self.log, self.fresh = threat.run.path / "compare", threat.log, fresh
        self.context = {"attacks": list(names), "adaptive": adaptive, "options": asdict(threat.opt),
                        "version": __version__}

    def __call__(self, label: str, params: dict, on: ThreatModel, compute: Callable[[], dict]) -> dict:
        key = {"point": label, "params": params, **self.context, "run_fingerprint": on.run.fingerprint(),
               "run_config": on.run.read_json("config.json")}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = self.folder / f"{''.join(c if c.isalnum() or c in '-+' else '_' for c in label)}-{digest}.json"
        if path.is_file() and not self.fresh:
            self.log(f"{label}: result from {path}")
            return json.loads(path.read_text())["result"]
        started = time.perf_counter()
        result = compute()
        result["seconds"] = time.perf_counter() - started
        self.folder.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"key": key, "result": result}, indent=1, sort_keys=True, default=str))
        self.log(f"{label}: {result['seconds']:.0f} s")
        return json.loads(path.read_text())["result"]


def compare_run(run_dir, defenses: Sequence, *, params: Optional[Dict[str, dict]] = None, attacks=None,
                adaptive: bool = True, options: Optional[Options] = None, log: Optional[Callable[[str], None]] = None,
                progress: bool = False, write: bool = True, fresh: bool = False, engine=None) -> dict:
    """Evaluate every defense or combination in ``defenses`` (spec texts, see `points`; ``params``:
    {defense name: hyperparameters}) on the run and write the comparison files there (unless ``write``
    is False). Points already evaluated with the same attacks and options are read from RUN/compare/
    (``fresh``: evaluate them again). Shadow models train on ``engine`` (`mia_fast.distributed`; default:
    this process). Returns the comparison (what compare.json holds)."""
    chosen = points(defenses, params)
    options = options or Options()
    names = resolve_attacks(attacks, options)
    threat = ThreatModel(run_dir, options, log=log, progress=progress, engine=engine)
    for point in chosen:  # bad names, hyperparameters and splits fail here, before anything is trained
        for name in point.spec.names:
            defense = create_defense(name, **point.params.get(name, {}))
            if defense.kind == "training":
                reference_records(defense, threat.dataset, threat.splits, threat.cfg)
    targets, results = _Targets(threat), _Results(threat, names, adaptive, fresh)
    started = time.perf_counter()
    out = {**run_header(threat, names), "undefended": results("none", {}, threat, lambda: _undefended(threat, names)),
           "defenses": {}}
    if threat.cfg.training_defense is not None:
        out["undefended"]["training"] = {"name": threat.cfg.training_defense, "params": threat.cfg.training_params}
    for point in chosen:
        out["defenses"][point.label] = results(point.label, point.params, targets(point),
                                               lambda: evaluate_point(targets, point, names, adaptive=adaptive))
    out["seconds"] = time.perf_counter() - started
    if write:
        threat.run.write_json("compare.json", out)
        write_comparison(threat.run.path, out)
    return out


def rows(cmp: dict) -> list:
    """One row per point of the comparison: the undefended target, then each defense."""
    t = cmp["target"]
    un = cmp["undefended"]
    mim0 = un["attacks"].get("mim0", {}).get("aware")
    out = [{"defense": "none", "train_accuracy": t["train_accuracy"], "test_accuracy": t["test_accuracy"],
            "mean_l1": 0.0, "label_flips": 0, "mim0_naive": mim0, "mim0_aware": mim0, "train_seconds": None,
            "epsilon": None, **un["summary"]}]
    for name, ev in cmp["defenses"].items():
        d = ev["defense"]
        mim0 = ev["attacks"].get("mim0", {})
        training = d.get("training", {})
        out.append({"defense": name, "train_accuracy": d["target"]["train_accuracy"]["with"],
                    "test_accuracy": d["target"]["test_accuracy"]["with"], "mean_l1": d["perturbation"]["mean_l1"],
                    "label_flips": d["perturbation"]["label_flips"], "mim0_naive": mim0.get("naive"),
                    "mim0_aware": mim0.get("aware"), "train_seconds": training.get("train_seconds"),
                    "epsilon": training.get("epsilon"), **ev["summary"]})
    return out


def _cell(m: Optional[dict]) -> str:
    return f"{_pct(m['accuracy'])} / {_pct(m['auc_leak'])}" if m else "-"


def _three(m: Optional[dict]) -> str:
    return " / ".join(_pct(m[k]) for k in ("accuracy", "precision", "recall")) if m else "-"


def _tables(cmp: dict) -> list:
    table = rows(cmp)
    privacy = ("Privacy and utility", "Best aware attack: the most accurate attack fitted on defended outputs "
               "(every attack in the battery and the adaptive ones); best score attack: the same over the attacks "
               "that read confidence values (label-only attacks see only labels). Beyond the label: the largest AUC "
               "among correctly classified records over the aware score attacks (0.5 = the scores add nothing to "
               "the label). Gap floor: what the label alone gives one query, 0.5 + (train - test) / 2 of that "
               f"point's target (undefended: {_pct(cmp['gap_floor'])}); a training defense lowers it.",
               ["defense", "mean L1", "label flips", "test accuracy", "best aware attack", "its accuracy",
                "best score attack", "its accuracy", "gap floor", "over gap floor", "best aware AUC",
                "TPR @ 0.1% FPR", "beyond-label AUC"],
               [[r["defense"], f"{r['mean_l1']:.3f}", str(r["label_flips"]), _pct(r["test_accuracy"]),
                 r["best_aware_attack"], _pct(r["best_aware_accuracy"]), str(r["best_score_attack"]),
                 _pct(r["best_score_accuracy"]), _pct(r["gap_floor"]),
                 f"{100 * (r['best_score_accuracy'] - r['gap_floor']):+.1f} pts",
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
                    *(_cell(ev["attacks"][a].get("aware")) for ev in cmp["defenses"].values())] for a in attacks])
    with_output = {name: ev for name, ev in cmp["defenses"].items() if "naive" in next(iter(ev["attacks"].values()))}
    out = [privacy, paper, per_attack]
    if with_output:
        out.append(("Every attack, naive (accuracy / AUC)", "Fitted on the outputs the target gives without its "
                    "output defense, scoring the defended ones (training defenses have no naive setting: the "
                    "attacker queries the trained target itself).", ["attack", *with_output],
                    [[a, *(_cell(ev["attacks"][a]["naive"]) for ev in with_output.values())] for a in attacks]))
    training = [r for r in table if r["train_seconds"] is not None]
    if training:
        out.append(("Training defenses", "Wall time of training the target (the attacker's shadow models take "
                    "as long each); epsilon: DP-SGD's spent budget from Opacus' accountant.",
                    ["defense", "train accuracy", "test accuracy", "gap floor", "train seconds", "epsilon"],
                    [[r["defense"], _pct(r["train_accuracy"]), _pct(r["test_accuracy"]), _pct(r["gap_floor"]),
                      f"{r['train_seconds']:.0f}", "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"]
                     for r in training]))
    adaptive = [(name, ev["adaptive"]) for name, ev in cmp["defenses"].items() if "adaptive" in ev]
    if adaptive:
        kinds = sorted({k for _, a in adaptive for k in a})
        out.append(("Adaptive attacks (accuracy / AUC)", "", ["defense", *kinds],
                    [[name, *(f"{_pct(a[k]['accuracy'])} / {_pct(a[k]['auc_leak'])}" if k in a else "-" for k in kinds)]
                     for name, a in adaptive]))
    return out


def privacy_utility_figure(cmp: dict, path: Path) -> None:
    """Every point against test accuracy: the best aware attack's accuracy (each point's own gap floor
    beside it) and TPR at 0.1% FPR; and the output defenses' attacks and beyond-label AUC against mean L1.
    The undefended target is the black star, its gap floor the dashed line."""
    table = rows(cmp)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colors = {r["defense"]: "black" if r["defense"] == "none" else plt.cm.tab20(i % 20) for i, r in enumerate(table)}
    marker = lambda r, plain: "*" if r["defense"] == "none" else plain  # noqa: E731
    for r in table:
        c, size = colors[r["defense"]], 160 if r["defense"] == "none" else 50
        axes[0].scatter(r["test_accuracy"], r["best_aware_accuracy"], marker=marker(r, "o"), s=size, color=c)
        axes[0].scatter(r["test_accuracy"], r["gap_floor"], marker="_", s=200, color=c)
        axes[0].annotate(r["defense"], (r["test_accuracy"], r["best_aware_accuracy"]), textcoords="offset points",
                         xytext=(4, 4), fontsize=7)
        axes[1].scatter(r["test_accuracy"], r["best_aware_tpr_at_0.1%_fpr"], marker=marker(r, "o"), s=size, color=c)
        axes[1].annotate(r["defense"], (r["test_accuracy"], r["best_aware_tpr_at_0.1%_fpr"]),
                         textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes[0].axhline(cmp["gap_floor"], color="red", lw=1, ls="--", label=f"undefended gap floor {cmp['gap_floor']:.3f}")
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[0].scatter([], [], marker="o", color="grey", label="best aware attack (label-only included)")
    axes[0].scatter([], [], marker="_", s=200, color="grey", label="that target's gap floor")
    axes[0].set(xlabel="test accuracy (as served)", ylabel="attack accuracy", ylim=(0.45, 1.0),
                title="privacy against utility")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].set(xlabel="test accuracy (as served)", ylabel="best aware TPR at 0.1% FPR", title="low-FPR leakage")
    output = [r for r in table if r["defense"] == "none" or r["mean_l1"] > 0]
    for r in output:
        c = colors[r["defense"]]
        axes[2].scatter(r["mean_l1"], r["best_aware_accuracy"], marker=marker(r, "o"), s=50, color=c)
        if not math.isnan(r["beyond_label_auc"]):
            axes[2].scatter(r["mean_l1"], r["beyond_label_auc"], marker="^", s=50, color=c)
        axes[2].annotate(r["defense"], (r["mean_l1"], r["best_aware_accuracy"]), textcoords="offset points",
                         xytext=(4, 4), fontsize=7)
    axes[2].axhline(0.5, color="grey", lw=0.8)
    axes[2].scatter([], [], marker="o", color="grey", label="best aware attack")
    axes[2].scatter([], [], marker="^", color="grey", label="beyond-label AUC (correctly classified)")
    axes[2].set(xlabel="mean L1 distortion of the served outputs", ylabel="accuracy / AUC", ylim=(0.45, 1.0),
                title="output defenses: distortion")
    axes[2].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{cmp['dataset']}: every defense against a defense-aware attacker")
    _save(fig, path)


#: Attack families of the frontier's leakage beyond the label, the label-only attacks last.
FRONTIER_FAMILIES = ("metric", "learned", "reference", "label")
#: Frontier numbers where more leakage is worse; label-only serving's bounds them for label-keeping defenses.
BOUNDED = ("beyond_label_metric", "beyond_label_learned", "beyond_label_reference", "beyond_label_label",
           "best_aware_accuracy", "best_score_accuracy", "tpr")


def frontier_rows(cmp: dict) -> list:
    """The output defenses' frontier: for the undefended target and each point with an output defense on
    it, mean L1, label flips, the leakage beyond the label (largest AUC among correctly classified records,
    aware) per attack family (metric thresholds; learned attack models, the adaptive MIM0s included;
    per-record shadow references; label-only attacks, which see what any label-keeping defense serves),
    the best aware attack, TPR at 0.1% FPR, and what averaging repeated
    queries adds to MIM0 fitted on single answers (accuracy points).

    An attacker facing a defense that keeps every label can take the argmax of each answer, and then sees
    exactly what label-only serving shows (its own copy of the defense included). So when the comparison
    has ``label-only``, each such defense's numbers in `BOUNDED` are at least label-only's: where the
    battery measured less, the row holds label-only's value and names the field in ``bounded`` (the
    battery's own number stays under ``measured``)."""
    def beyond(attacks: dict, adaptive: dict, family: str) -> float:
        values = [r["aware"].get("auc_correct_leak", math.nan) for n, r in attacks.items()
                  if n in ATTACKS and ATTACKS[n].family == family]
        if family == "learned":
            values += [m.get("auc_correct_leak", math.nan) for m in adaptive.values()]
        values = [v for v in values if not math.isnan(v)]
        return max(values) if values else math.nan

    out = []
    points = [("none", cmp["undefended"], 0.0, 0)] + [
        (name, ev, ev["defense"]["perturbation"]["mean_l1"], ev["defense"]["perturbation"]["label_flips"])
        for name, ev in cmp["defenses"].items()
        if "naive" in next(iter(ev["attacks"].values())) and "training" not in ev["defense"]]
    keeps = {name: _keeps_label(ev) for name, ev, _, _ in points}
    for name, ev, l1, flips in points:
        adaptive = ev.get("adaptive", {})
        attacks = ev["attacks"]
        averaging = adaptive.get("averaging")
        mim0 = attacks.get("mim0", {}).get("aware")
        out.append({"defense": name, "mean_l1": l1, "label_flips": flips,
                    **{f"beyond_label_{f}": beyond(attacks, adaptive, f) for f in FRONTIER_FAMILIES},
                    "best_aware_attack": ev["summary"]["best_aware_attack"],
                    "best_aware_accuracy": ev["summary"]["best_aware_accuracy"],
                    "best_score_accuracy": ev["summary"]["best_score_accuracy"],
                    "gap_floor": ev["summary"]["gap_floor"], "tpr": ev["summary"]["best_aware_tpr_at_0.1%_fpr"],
                    "gap_tpr": attacks.get("gap", {}).get("aware", {}).get("tpr_at_0.1%_fpr", math.nan),
                    "averaging_gain": (averaging["accuracy"] - mim0["accuracy"]) if averaging and mim0 else math.nan,
                    "bounded": [], "measured": {}})
    bound = next((r for r in out if r["defense"] == "label-only"), None)
    for r in out:
        if bound is None or r is bound or not keeps[r["defense"]]:
            continue
        for key in BOUNDED:
            if bound[key] > r[key] + 1e-9:  # not for float noise between equal accuracies
                r["measured"][key], r[key] = r[key], bound[key]
                r["bounded"].append(key)
    return out


def _keeps_label(ev: dict) -> bool:
    """Whether a point's output defense never changes a label (its deployed key is NAME-HASH)."""
    from ..defenses import DEFENSES

    key = ev.get("defense", {}).get("key")
    cls = DEFENSES.get(key.rsplit("-", 1)[0]) if key else None
    return bool(cls is not None and cls.kind == "output" and cls.keeps_label)


def _frontier_table(cmp: dict) -> tuple:
    def cell(r, key, text):
        value = text(r[key])
        return f"{value} (battery {text(r['measured'][key])})" if key in r["bounded"] else value

    pct = lambda v: "-" if math.isnan(v) else _pct(v)  # noqa: E731
    tpr = lambda v: f"{v:.3f}"  # noqa: E731
    return ("Output defenses: the frontier", "Leakage beyond the label (AUC among correctly classified records, "
            "aware) for each attack family: metric thresholds (confidence, entropy, modified entropy), learned "
            "attack models (MIM0-3, Shokri, the adaptive MIM0s), per-record shadow references (LiRA, RMIA), and "
            "label-only attacks (robustness, boundary, label-only LiRA: what the labels alone leak among correctly "
            "classified records, the least any defense that keeps the labels can leak there). "
            "Averaging: what MIM0 on the mean of repeated answers gains over MIM0 on one answer. An attacker "
            "facing a defense that keeps every label can take the argmax of each answer and then sees what "
            "label-only serving shows, so label-only's numbers bound every such defense from below: where "
            "the battery measured less for one, the cell shows label-only's value and the battery's in brackets.",
            ["defense", "mean L1", "label flips", "beyond label: metric", "learned", "reference", "labels only",
             "best aware attack", "its accuracy", "best score attack accuracy", "gap floor", "TPR @ 0.1% FPR",
             "gap attack's TPR", "averaging gain"],
            [[r["defense"], f"{r['mean_l1']:.3f}", str(r["label_flips"]),
              *(cell(r, f"beyond_label_{f}", pct) for f in FRONTIER_FAMILIES),
              r["best_aware_attack"], cell(r, "best_aware_accuracy", pct), cell(r, "best_score_accuracy", pct),
              _pct(r["gap_floor"]), cell(r, "tpr", tpr), "-" if math.isnan(r["gap_tpr"]) else tpr(r["gap_tpr"]),
              "-" if math.isnan(r["averaging_gain"]) else f"{100 * r['averaging_gain']:+.1f} pts"]
             for r in frontier_rows(cmp)])


def frontier_figure(cmp: dict, path: Path) -> None:
    """Leakage beyond the label per attack family, and the best aware attack, against mean L1 for the
    output defenses, with the gap floor and label-only serving (the bound of label-keeping ones) drawn."""
    table = frontier_rows(cmp)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    styles = dict(zip(FRONTIER_FAMILIES, ("^", "s", "D", "v")))
    for i, r in enumerate(table):
        c = "black" if r["defense"] == "none" else plt.cm.tab20(i % 20)
        for family, marker in styles.items():
            v = r[f"beyond_label_{family}"]
            if not math.isnan(v):
                axes[0].scatter(r["mean_l1"], v, marker=marker, s=45, color=c)
        axes[1].scatter(r["mean_l1"], r["best_aware_accuracy"], marker="o", s=50, color=c, label=r["defense"])
        axes[1].scatter(r["mean_l1"], r["best_score_accuracy"], marker="x", s=50, color=c)
    for family, marker in styles.items():
        axes[0].scatter([], [], marker=marker, color="grey",
                        label="label-only attacks" if family == "label" else f"{family} attacks")
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[0].axhline(0.55, color="green", lw=0.8, ls=":", label="0.55")
    label_only = next((r for r in table if r["defense"] == "label-only"), None)
    if label_only is not None and not math.isnan(label_only["beyond_label_reference"]):
        axes[0].axhline(label_only["beyond_label_reference"], color="purple", lw=1, ls=":",
                        label=f"label-only serving, reference attacks {label_only['beyond_label_reference']:.3f}")
    labels_alone = table[0]["beyond_label_label"]  # the undefended target's labels: what every label-keeping defense serves
    if not math.isnan(labels_alone):
        axes[0].axhline(labels_alone, color="brown", lw=1, ls="-.",
                        label=f"labels alone (label-only attacks, undefended) {labels_alone:.3f}")
    axes[0].set(xlabel="mean L1 distortion of the served outputs", ylabel="AUC among correctly classified (aware)",
                ylim=(0.45, 1.0), title="leakage beyond the label (colours: right)")
    axes[0].legend(fontsize=7, loc="upper right")
    axes[1].axhline(cmp["gap_floor"], color="red", lw=1, ls="--", label=f"gap floor {cmp['gap_floor']:.3f}")
    if label_only is not None:
        axes[1].axhline(label_only["best_aware_accuracy"], color="purple", lw=1, ls=":",
                        label=f"label-only serving {label_only['best_aware_accuracy']:.3f}: the bound of "
                              "every label-keeping defense")
    axes[1].scatter([], [], marker="x", color="grey", label="(x: best attack that reads scores)")
    axes[1].set(xlabel="mean L1 distortion of the served outputs", ylabel="accuracy of the best aware attack (o)",
                ylim=(0.45, 1.0), title="strongest aware attacker")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"{cmp['dataset']}: output defenses against a defense-aware attacker")
    _save(fig, path)


def write_comparison(run_dir, cmp: dict) -> None:
    """compare.png, compare.md and a self-contained compare.html in ``run_dir``."""
    run_dir = Path(run_dir)
    privacy_utility_figure(cmp, run_dir / FIGURE)
    tables = _tables(cmp)
    figures = {FIGURE: "Privacy against utility: best aware attack and TPR at 0.1% FPR against test accuracy, "
                       "with gap floors"}
    if len(frontier_rows(cmp)) > 1:
        frontier_figure(cmp, run_dir / FRONTIER_FIGURE)
        tables.append(_frontier_table(cmp))
        figures[FRONTIER_FIGURE] = "Output defenses: leakage beyond the label per attack family and the best aware attack against mean L1"
    intro = (f"{cmp['dataset']}: {len(cmp['defenses'])} defenses against the same attacks. The attacker "
             f"knows {cmp['known_members']} members and {cmp['known_nonmembers']} non-members and is scored on "
             f"{cmp['scored_members']} + {cmp['scored_nonmembers']} others; aware = it knows the defense and its "
             "hyperparameters: it trains its shadow models with the training defense, runs its own copy of the "
             "output defense fitted on its own shadow data, and fits on defended outputs.")
    md = [f"# Defense comparison: {cmp['dataset']}", "", intro] + markdown_tables(tables)
    md += [line for name, caption in figures.items() for line in ("", f"![{caption}]({name})")]
    md += ["", "Every number: compare.json."]
    with atomic_path(run_dir / "compare.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    page = html_page(f"mia-fast compare: {cmp['dataset']}",
                     [f"<h1>Defense comparison: {cmp['dataset']}</h1>", f"<p>{intro}</p>", *html_tables(tables)],
                     figures, run_dir)
    with atomic_path(run_dir / "compare.html") as tmp:
        tmp.write_text(page)


def format_comparison(cmp: dict) -> str:
    """The table `mia-fast compare` prints."""
    lines = [f"{cmp['dataset']}: defense-aware attacks; undefended gap floor {_pct(cmp['gap_floor'])}",
             f"{'defense':22s}{'mean L1':>9s}{'flips':>7s}{'test acc':>10s}{'gap floor':>11s}{'best aware attack':>24s}"
             f"{'best score attack':>30s}{'TPR@0.1%':>10s}{'beyond label':>14s}"]
    for r in rows(cmp):
        best = f"{r['best_aware_attack']} {_pct(r['best_aware_accuracy'])}"
        score = f"{r['best_score_attack']} {_pct(r['best_score_accuracy'])}"
        lines.append(f"{r['defense']:22s}{r['mean_l1']:9.3f}{r['label_flips']:7d}{_pct(r['test_accuracy']):>10s}"
                     f"{_pct(r['gap_floor']):>11s}"
                     f"{best:>24s}{score:>30s}{r['best_aware_tpr_at_0.1%_fpr']:10.3f}{_pct(r['beyond_label_auc']):>14s}")
    return "\n".join(lines)
