"""The experiments of Bai et al. 2021 (input perturbation), run on any dataset and printed beside the
paper's numbers where the dataset is the paper's (MNIST, for which Fashion-MNIST stands in here, and
CIFAR-10):

    bai-table2      train / test / attack accuracy without and with the framework (AdvGAN), Table 2
    bai-table3      min-max (adversarial regularization), DP-SGD at epsilon 50 and the framework, Table 3
    bai-generators  AdvGAN, FGSM, OPTMARGIN without and with the constraints (eps, eq. 2), Figs. 4-5
    bai-distance    distance thresholds 50, 100, 150, 200 (per 784 dimensions), Fig. 6
    bai-rate        perturbation rates 0.2 .. 1.0, Fig. 7

The attack is measured every ``every`` epochs of the target's training, as in the figures: a threshold
attack on the modified entropy (Song and Mittal 2021), per-class thresholds fitted on the adversary's
known members and non-members of the target being trained (so it knows whatever the defense did), scored
on the records it does not know. The simulator (trained on the originals) is fitted once per
experiment and copied into every setting, so the settings differ only in what they vary.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..attacks import MetricAttack
from ..defenses import create_defense
from ..defenses.perturbation import Simulator
from ..defenses.training.input_perturbation import default_eps
from ..io import atomic_path
from ..metrics import attack_metrics, gap_floor
from ..models import target_for
from ..pipeline import Config, load_run_dataset, new_target, reference_records, run_splits, split_positions
from ..seeding import stream_seed
from ..training import predict_proba, train_model, train_target

BAI_EXPERIMENTS = ("bai-table2", "bai-table3", "bai-generators", "bai-distance", "bai-rate")
#: The paper's numbers: train, test, attack accuracy (%). Fashion-MNIST is compared with the MNIST row.
PAPER = {"bai-table2": {"mnist": {"none": (100.0, 57.9, 89.0), "advgan": (91.66, 91.12, 52.5)},
                        "cifar10": {"none": (96.1, 62.24, 93.71), "advgan": (78.3, 69.7, 51.4)}},
         "bai-table3": {"cifar10": {"min-max (advreg)": (68.6, 62.7, 52.9), "dp-sgd epsilon=50": (1.2, 1.0, 50.0),
                                    "framework (advgan)": (78.3, 69.7, 51.94)}}}
PAPER_STAND_IN = {"fashion-mnist": "mnist"}
Log = Callable[[str], None]


@dataclasses.dataclass
class _Data:
    x_in: torch.Tensor
    y_in: torch.Tensor
    x_out: torch.Tensor
    y_out: torch.Tensor
    reference: tuple
    known: tuple  # positions in (members, non-members) the adversary knows
    scored: tuple
    arch: tuple   # (architecture name, kwargs)


def _data(cfg: Config) -> _Data:
    ds = load_run_dataset(cfg)
    s = run_splits(cfg, len(ds))
    reference = reference_records(create_defense("input-perturbation"), ds, s, cfg)
    t = lambda a: torch.from_numpy(a)  # noqa: E731
    return _Data(t(ds.x[s.members]), t(ds.y[s.members]), t(ds.x[s.nonmembers]), t(ds.y[s.nonmembers]), reference,
                 split_positions(s, s.adversary_members, s.adversary_nonmembers),
                 split_positions(s, s.eval_members, s.eval_nonmembers),
                 target_for(ds.kind, ds.x.shape[1:], ds.num_classes))


def _model(data: _Data, cfg: Config, defense=None):
    name, kwargs = data.arch
    return new_target(cfg, name, defense.architecture(kwargs) if defense is not None else kwargs)


def measure(model, data: _Data, device) -> dict:
    """Train / test accuracy of ``model`` and the threshold attack fitted on the known records."""
    p_in, p_out = predict_proba(model, data.x_in, device=device), predict_proba(model, data.x_out, device=device)
    (k_in, k_out), (s_in, s_out) = data.known, data.scored
    attack = MetricAttack("modified_entropy").fit(p_in[k_in], data.y_in[k_in], p_out[k_out], data.y_out[k_out])
    m = attack_metrics(attack.score(p_in[s_in], data.y_in[s_in]), attack.score(p_out[s_out], data.y_out[s_out]),
                       threshold=attack.threshold)
    train, test = (float((p.argmax(1) == y).float().mean()) for p, y in ((p_in, data.y_in), (p_out, data.y_out)))
    return {"train_accuracy": train, "test_accuracy": test, "attack_accuracy": m["accuracy"], "attack_auc": m["auc"],
            "gap_floor": gap_floor(train, test)}


def _curve(upload: torch.Tensor, data: _Data, cfg: Config, every: int) -> list:
    """Train the target on ``upload`` (the labels of D_tar) and measure it every ``every`` epochs."""
    model, points = _model(data, cfg), []

    def after_epoch(epoch, m) -> bool:
        if (epoch + 1) % every == 0 or epoch + 1 == cfg.target_epochs:
            points.append({"epoch": epoch + 1, **measure(m, data, cfg.device)})
            m.train()
        return False

    train_target(model, upload, data.y_in, epochs=cfg.target_epochs, lr=cfg.target_lr,
                 seed=stream_seed(cfg.seed, "target"), device=cfg.device, progress=False, after_epoch=after_epoch)
    return points


class _Protector:
    """Input-perturbation settings of one experiment sharing one simulator fitted on the originals."""

    def __init__(self, data: _Data, cfg: Config, params: dict, log: Log, progress: bool, engine=None):
        self.data, self.cfg, self.params, self.log, self.progress = data, cfg, params, log, progress
        self.engine = engine
        self._base: Optional[Simulator] = None

    def defense(self, **overrides):
        """The setting's defense; ``generator_params`` belong to the experiment's generator, so a setting
        with another generator (bai-generators) takes that one's defaults."""
        params = {**self.params, **overrides}
        if params["generator"] != self.params["generator"]:
            params.pop("generator_params", None)
        return create_defense("input-perturbation", **params)

    def upload(self, constrained: bool = True, **overrides):
        defense = self.defense(**overrides)
        d, cfg = self.data, self.cfg
        seed = stream_seed(cfg.seed, "target")
        if self._base is None:
            self._base = defense.simulator(_model(d, cfg), epochs=cfg.target_epochs, lr=cfg.target_lr, seed=seed,
                                           device=cfg.device, engine=self.engine).fit(d.x_in, d.y_in,
                                                                                      progress=self.progress)
        simulator = copy.deepcopy(self._base)  # a copy leaves the engine behind (it is a handle on this process)
        simulator.engine = self.engine
        protection = defense.protect(_model(d, cfg), d.x_in, d.y_in, d.reference, epochs=cfg.target_epochs,
                                     lr=cfg.target_lr, seed=seed, device=cfg.device, progress=self.progress,
                                     log=self.log, simulator=simulator, constrained=constrained)
        return protection


def _pct(v: float) -> str:
    return f"{100 * v:5.1f}%"


def _paper_rows(experiment: str, dataset: str):
    return PAPER.get(experiment, {}).get(PAPER_STAND_IN.get(dataset, dataset))


def _curves_figure(series: dict, path: Path, title: str, with_accuracy: bool = False) -> None:
    from .report import plt, _save

    panels = 2 if with_accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4), squeeze=False)
    for i, (label, points) in enumerate(series.items()):
        epochs = [p["epoch"] for p in points]
        color = plt.cm.tab10(i % 10)
        axes[0, 0].plot(epochs, [p["attack_accuracy"] for p in points], "o-", ms=3, color=color, label=label)
        if with_accuracy:
            axes[0, 1].plot(epochs, [p["train_accuracy"] for p in points], "-", color=color, label=f"{label} train")
            axes[0, 1].plot(epochs, [p["test_accuracy"] for p in points], "--", color=color, label=f"{label} test")
    axes[0, 0].axhline(0.5, color="grey", lw=0.8)
    axes[0, 0].set(xlabel="target training epoch", ylabel="attack accuracy", title="membership inference")
    axes[0, 0].legend(fontsize=7)
    if with_accuracy:
        axes[0, 1].set(xlabel="target training epoch", ylabel="accuracy", title="target train (-) / test (--)")
        axes[0, 1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def run_bai(experiment: str, cfg: Config, root: Path, *, params: Optional[dict] = None, every: Optional[int] = None,
            log: Log = print, progress: bool = False, engine=None) -> tuple:
    """Run one of `BAI_EXPERIMENTS`; returns (printable lines, numbers) and writes reproduce-EXPERIMENT.json
    and a figure under ``root``. ``params``: hyperparameters of every input-perturbation setting (AdvGAN
    unless the experiment varies the generator); the simulator's models train on ``engine`` (default: here)."""
    if experiment not in BAI_EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; known: {', '.join(BAI_EXPERIMENTS)}")
    cfg = cfg.resolved()
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = _data(cfg)
    dims = data.x_in[0].numel()
    every = every or max(1, cfg.target_epochs // 20)
    protector = _Protector(data, cfg, {"generator": "advgan", **(params or {})}, log, progress, engine)
    eps100 = default_eps(dims)
    paper = _paper_rows(experiment, cfg.dataset)
    stand_in = f" ({PAPER_STAND_IN[cfg.dataset].upper()})" if cfg.dataset in PAPER_STAND_IN and paper else ""
    series, numbers, lines = {}, {}, []
    header = f"{'setting':28s}{'train acc':>10s}{'test acc':>10s}{'attack acc':>11s}{'gap floor':>10s}"
    if experiment in ("bai-table2", "bai-table3"):
        settings = [("none", None)]
        if experiment == "bai-table3":
            settings += [("min-max (advreg)", create_defense("advreg")),
                         ("dp-sgd epsilon=50", create_defense("dp-sgd", epsilon=50.0))]
        label = "advgan" if experiment == "bai-table2" else "framework (advgan)"
        eps = (23.0 * dims / 3072) if experiment == "bai-table3" else None  # Table 3: distance 23 on CIFAR-10
        lines.append(header + ("   paper" + stand_in + ": train / test / attack" if paper else ""))
        for name, defense in settings + [(label, "input-perturbation")]:
            if defense == "input-perturbation":
                prot = protector.upload(**({"eps": eps} if eps else {}))
                point = _curve(prot.x, data, cfg, cfg.target_epochs)[-1]
                point["input_perturbation"] = {k: v for k, v in prot.summary().items() if k != "rounds"}
            elif defense is None:
                point = _curve(data.x_in, data, cfg, cfg.target_epochs)[-1]
            else:
                model = _model(data, cfg, defense)
                ref = data.reference if "reference" in defense.uses else None
                train_model(model, data.x_in, data.y_in, defense=defense, reference=ref, epochs=cfg.target_epochs,
                            lr=cfg.target_lr, seed=stream_seed(cfg.seed, "target"), device=cfg.device)
                point = {"epoch": cfg.target_epochs, **measure(model, data, cfg.device)}
            numbers[name] = point
            extra = "   %.1f%% / %.1f%% / %.1f%%" % paper[name] if paper and name in paper else ""
            lines.append(f"{name:28s}{_pct(point['train_accuracy']):>10s}{_pct(point['test_accuracy']):>10s}"
                         f"{_pct(point['attack_accuracy']):>11s}{_pct(point['gap_floor']):>10s}{extra}")
        if experiment == "bai-table3" and cfg.dataset != "cifar10":
            lines.append("paper's rows are CIFAR-10 at 50 epochs, distance 23 (here scaled: "
                         f"{23.0 * dims / 3072:.3g} on {dims} dimensions); its DP row is below chance for 10 classes")
    else:
        if experiment == "bai-generators":
            grid = [(f"{g} {'with' if c else 'without'} constraints", {"generator": g}, c)
                    for c in (False, True) for g in ("advgan", "fgsm", "optmargin")]
        elif experiment == "bai-distance":
            grid = [(f"distance {d}", {"eps": d * dims / 784}, True) for d in (50, 100, 150, 200)]
        else:
            grid = [(f"rate {a:.0%}", {"alpha": a, "eps": eps100}, True) for a in (0.2, 0.4, 0.6, 0.8, 1.0)]
        series["no defense"] = _curve(data.x_in, data, cfg, every)
        numbers["no defense"] = {"curve": series["no defense"]}
        for label, overrides, constrained in grid:
            log(f"{experiment}: {label}")
            prot = protector.upload(constrained=constrained, **overrides)
            series[label] = _curve(prot.x, data, cfg, every)
            numbers[label] = {"curve": series[label],
                              "input_perturbation": {k: v for k, v in prot.summary().items() if k != "rounds"}}
        lines.append(f"attack accuracy every {every} epochs (last: train / test / attack):")
        for label, points in series.items():
            last = points[-1]
            lines.append(f"{label:32s}" + " ".join(f"{p['attack_accuracy']:.2f}" for p in points)
                         + f"   | {_pct(last['train_accuracy'])} / {_pct(last['test_accuracy'])} / "
                         f"{_pct(last['attack_accuracy'])}")
        figure = root / f"{experiment}.png"
        _curves_figure(series, figure, f"{cfg.dataset}: {experiment} (Bai et al. Fig. "
                       f"{ {'bai-generators': '4-5', 'bai-distance': '6', 'bai-rate': '7'}[experiment]})",
                       with_accuracy=experiment == "bai-generators")
        lines.append(f"figure: {figure}")
    seconds = time.perf_counter() - started
    with atomic_path(root / f"reproduce-{experiment}.json") as tmp:
        tmp.write_text(json.dumps({"experiment": experiment, "config": dataclasses.asdict(cfg), "every": every,
                                   "params": protector.params, "seconds": seconds, **numbers}, indent=2, default=float))
    return [f"{experiment} on {cfg.dataset} ({cfg.target_epochs} epochs, seed {cfg.seed}, {seconds:.0f} s)", *lines], numbers


__all__ = ["BAI_EXPERIMENTS", "PAPER", "run_bai", "measure"]
