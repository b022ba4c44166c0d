"""The AEPPT paper's experimental pipeline as stages over one run directory (Xue et al., sec. 5.1-5.3).

    target     split the data (D_tar / D_tar-bar, adversary share), train the target, save its outputs
    substitute train the defender's substitute MIM on D_tar vs D_tar-bar outputs
    attack     train the adversary's MIM0 on its known share of members and non-members
    defend     AEPPT on every output the target serves; score MIM0 without and with the defense

`run_demo` runs all four; every artefact lands in the run directory, written atomically:
config.json, splits.json, target.pt, substitute.pt, mim0.pt, outputs/*.npy, results.json, and the
deployed defense under defenses/NAME-HASH/ (`deploy_defense`: the fitted defense, the served answers on
D_tar and D_tar-bar, summary.json), where every later evaluation of the same defense finds it.
The adversary here is the paper's (sec. 5.3): it trains MIM0 on undefended outputs of the records it
knows and then attacks the defended outputs of the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .checkpoint import SUFFIX, checkpoint_file, data_hash, load_model, load_substitute, save_model, save_substitute
from .data import load_dataset, make_splits
from .data.splits import Splits
from .defenses import AEPPT, DEFENSES, OutputDefense, TrainingDefense, create_defense, load_defense
from .defenses.output.aeppt import PAPER_EPS
from .errors import InputError
from .io import atomic_path, save_array
from .metrics import attack_metrics
from .models import TARGETS, AttackMIM, target_for
from .seeding import numpy_stream, stream, stream_seed
from .training import accuracy, predict_proba, train_model, train_substitute

#: Per-dataset defaults; anything not named falls back to the paper's setting (Config's defaults).
#: CIFAR-100 and Purchase-100: Table 1 sizes and the eps of Tables 3-4. Location-30: eps chosen on the
#: README's run so that MIM0 lands near chance (2e-4 -> 55%, 3e-4 -> 47%). Digits barely leaks when
#: trained as the paper trains: its demo target overfits 100 samples (lr 1e-3, 300 epochs) so that
#: there is some membership signal to defend.
DATASET_DEFAULTS = {
    "cifar100": {"members": 50000, "nonmembers": 10000, "eps": PAPER_EPS["cifar100"]},
    "purchase100": {"members": 20000, "nonmembers": 20000, "eps": PAPER_EPS["purchase100"]},
    "location30": {"members": 1500, "nonmembers": 1500, "eps": 2.5e-4},
    "digits": {"members": 100, "nonmembers": 100, "target_lr": 1e-3, "target_epochs": 300, "eps": 2e-3},
    # Half of Bai et al.'s split sizes (5,000 to upload, 5,000 test) and a quarter of their 100 epochs, so
    # that input perturbation's 5 simulator models fit in minutes on 2 cores; at 1e-3 the small CNN still
    # overfits Fashion-MNIST (train ~94%, test ~86% after 25 epochs).
    "fashion-mnist": {"members": 2500, "nonmembers": 2500, "target_lr": 1e-3, "target_epochs": 25},
    "mnist": {"members": 2500, "nonmembers": 2500, "target_lr": 1e-3, "target_epochs": 25},
}


@dataclass
class Config:
    """One experiment. ``None`` means: the dataset's default (DATASET_DEFAULTS), else the paper's.

    ``classes`` merges the dataset's classes into that many (label mod classes): a stand-in for the
    paper's Purchase-100 re-clustered into 2-100 classes (Table 5), whose raw records are not published.
    ``training_defense`` (a registered `TrainingDefense`, with ``training_params``) trains the target
    with it; the aware attacker's shadow models are trained the same way.
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None
    members: Optional[int] = None
    nonmembers: Optional[int] = None
    adversary_fraction: float = 0.5
    target_epochs: Optional[int] = None
    target_lr: Optional[float] = None
    mim_epochs: int = 100
    eps: Optional[float] = None
    iters: int = 100
    batch: int = 4096
    seed: int = 0
    device: str = "cpu"
    classes: Optional[int] = None
    training_defense: Optional[str] = None
    training_params: Optional[dict] = None

    def resolved(self) -> "Config":
        paper = {"target_epochs": 100, "target_lr": 1e-4, "eps": 1e-3}
        values = asdict(self)
        for key, value in {**paper, **DATASET_DEFAULTS.get(self.dataset, {})}.items():
            if values.get(key) is None:
                values[key] = value
        return Config(**values)

    def step_size(self) -> float:
        return self.resolved().eps


class RunDir:
    """One experiment's directory; every file is written atomically."""

    def __init__(self, path, *, create: bool = False):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "outputs").mkdir(exist_ok=True)
        elif not (self.path / "config.json").is_file():
            raise InputError(f"run directory {self.path}: no config.json (make one with mia-fast train-target or demo)")

    def write_json(self, name: str, obj) -> None:
        with atomic_path(self.path / name) as tmp:
            tmp.write_text(json.dumps(obj, indent=2))

    def read_json(self, name: str):
        p = self.path / name
        if not p.is_file():
            raise InputError(f"run directory {self.path}: {name} missing (run the stage that makes it first)")
        return json.loads(p.read_text())

    def config(self) -> Config:
        return Config(**self.read_json("config.json"))

    def splits(self) -> Splits:
        return Splits(**self.read_json("splits.json"))

    def save_output(self, name: str, array) -> None:
        save_array(self.path / "outputs" / f"{name}.npy", array)

    def output(self, name: str) -> torch.Tensor:
        p = self.path / "outputs" / f"{name}.npy"
        if not p.is_file():
            raise InputError(f"run directory {self.path}: outputs/{name}.npy missing")
        return torch.from_numpy(np.load(p, allow_pickle=False))

    def fingerprint(self) -> str:
        """sha256 of the splits and the target's outputs: a cache made for another target is stale."""
        return data_hash([torch.frombuffer(bytearray((self.path / "splits.json").read_bytes()), dtype=torch.uint8),
                          self.output("members"), self.output("nonmembers")])


Log = Callable[[str], None]


def load_run_dataset(cfg: Config):
    """The run's dataset, with its classes merged into ``cfg.classes`` when that is set."""
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.classes is None:
        return ds
    if not 2 <= cfg.classes <= ds.num_classes:
        raise InputError(f"classes must be in 2..{ds.num_classes} for {cfg.dataset}, got {cfg.classes}")
    return dataclasses.replace(ds, y=ds.y % cfg.classes, num_classes=cfg.classes)


def training_defense(cfg: Config) -> Optional[TrainingDefense]:
    """The run's training defense (``cfg.training_defense``), or None."""
    if cfg.training_defense is None:
        return None
    if DEFENSES.get(cfg.training_defense) is None or DEFENSES[cfg.training_defense].kind != "training":
        raise InputError(f"{cfg.training_defense!r} is not a training defense; known: "
                         f"{', '.join(n for n, c in DEFENSES.items() if c.kind == 'training')}")
    return create_defense(cfg.training_defense, **(cfg.training_params or {}))


def outside_records(n: int, splits: Splits, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` dataset indices outside D_tar and D_tar-bar, drawn at random: the defender's
    reference data for training defenses that use some (they are public records from the same
    distribution, so the attacker's pool may hold them too)."""
    used = np.zeros(n, dtype=bool)
    used[splits.members] = used[splits.nonmembers] = True
    return numpy_stream(seed, "training-defense").permutation(np.flatnonzero(~used))[:size]


def reference_records(defense: Optional[TrainingDefense], ds, splits: Splits, cfg: Config) -> Optional[tuple]:
    """(x, y) of the defender's reference records for a training defense that uses some (`outside_records`,
    as many as D_tar at most), None for one that does not; InputError when the split leaves none."""
    if defense is None or "reference" not in defense.uses:
        return None
    rows = outside_records(len(ds), splits, len(splits.members), cfg.seed)
    if len(rows) == 0:
        raise InputError(f"{defense.name} needs reference records outside D_tar and D_tar-bar, and this split uses "
                         f"all {len(ds)} records of {cfg.dataset}: pass fewer --members / --nonmembers")
    return torch.from_numpy(ds.x[rows]), torch.from_numpy(ds.y[rows])


def run_splits(cfg: Config, n: int) -> Splits:
    """The run's splits of a dataset of ``n`` records (``cfg`` resolved)."""
    return make_splits(n, members=cfg.members, nonmembers=cfg.nonmembers, adversary_fraction=cfg.adversary_fraction,
                       seed=cfg.seed)


def new_target(cfg: Config, name: str, kwargs: dict):
    """A target model ``name(**kwargs)`` initialised from the run seed's "target" stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.seed, "target"))
        return TARGETS[name](**kwargs)


def stage_target(run: RunDir, cfg: Config, *, splits: Optional[Splits] = None, log: Log = print,
                 progress: bool = True, engine=None) -> dict:
    """Split the data (or take ``splits``) and train the target, with the run's training defense if any
    (its independent work units on ``engine``, `mia_fast.distributed`; default: this process)."""
    cfg = cfg.resolved()
    if cfg.data_dir is not None:  # later stages (evaluate) may run from another directory
        cfg = dataclasses.replace(cfg, data_dir=str(Path(cfg.data_dir).resolve()))
    defense = training_defense(cfg)
    if defense is not None:
        cfg = dataclasses.replace(cfg, training_params=defense.params())
    ds = load_run_dataset(cfg)
    splits = splits or run_splits(cfg, len(ds))
    reference = reference_records(defense, ds, splits, cfg)  # before anything is written: it may refuse
    for stale in ("target.pt", f"target{SUFFIX}", *(f"outputs/{s}{e}.npy" for s in ("members", "nonmembers")
                                                   for e in ("", "_labels"))):
        (run.path / stale).unlink(missing_ok=True)  # a retraining that fails leaves no target of other splits
    run.write_json("config.json", asdict(cfg))
    run.write_json("splits.json", asdict(splits))
    name, kwargs = target_for(ds.kind, ds.x.shape[1:], ds.num_classes)
    kwargs = defense.architecture(kwargs) if defense is not None else kwargs
    log(f"target: {name} on {cfg.dataset} ({len(splits.members)} members, {len(splits.nonmembers)} non-members), "
        f"{cfg.target_epochs} epochs" + (f", defense {defense!r}" if defense is not None else ""))
    model = new_target(cfg, name, kwargs)
    x_in, y_in = ds.x[splits.members], ds.y[splits.members]
    x_out, y_out = ds.x[splits.nonmembers], ds.y[splits.nonmembers]
    started = time.perf_counter()
    history = train_model(model, x_in, y_in, defense=defense, reference=reference, epochs=cfg.target_epochs,
                          lr=cfg.target_lr, seed=stream_seed(cfg.seed, "target"), device=cfg.device, progress=progress,
                          engine=engine)
    seconds = time.perf_counter() - started
    for split, x, y in [("members", x_in, y_in), ("nonmembers", x_out, y_out)]:
        run.save_output(split, predict_proba(model, x, device=cfg.device).numpy())
        run.save_output(f"{split}_labels", y)
    meta = {"dataset": cfg.dataset, "train_accuracy": accuracy(model, x_in, y_in, device=cfg.device),
            "test_accuracy": accuracy(model, x_out, y_out, device=cfg.device),
            "epochs": history.get("epochs_run", cfg.target_epochs), "lr": history.get("lr", cfg.target_lr),
            "final_loss": history["loss"][-1], "train_seconds": seconds,
            "training_defense": None if defense is None else {"name": defense.name, "params": defense.params()},
            **{k: history[k] for k in ("epochs_run", "best_epoch", "epsilon", "epsilon_holds", "delta",
                                       "noise_multiplier", "soft_label_confidence", "input_perturbation") if k in history}}
    if reference is not None:
        meta["reference_records"] = len(reference[1])
    save_model(run.path / f"target{SUFFIX}", "target", model.cpu(), {"name": name, **kwargs}, meta)
    log(f"target: train accuracy {meta['train_accuracy']:.1%}, test accuracy {meta['test_accuracy']:.1%}"
        + (f", epsilon {meta['epsilon']:.2f}" if "epsilon" in meta else "") + f" ({seconds:.0f} s)")
    return meta


def stage_protect(out_dir, cfg: Config, defense, *, log: Log = print, progress: bool = True, engine=None) -> dict:
    """`mia-fast protect-data`: split the data as `stage_target` does and write the upload that the input
    perturbation ``defense`` makes of D_tar (the records train-target with this defense trains on), into
    ``out_dir``: protected_x.npy, protected_y.npy, records.csv (per record: dataset index, selected,
    perturbed, distance, simulator loss, round), protected.png (originals above their uploaded copies)
    and protection.json (config, hyperparameters, leakage before and after, per-round history), each
    written atomically, protection.json last. The simulator's models train on ``engine`` (default: here)."""
    from .evaluation.report import protected_figure

    cfg = cfg.resolved()
    out = Path(out_dir)
    ds = load_run_dataset(cfg)
    splits = run_splits(cfg, len(ds))
    reference = reference_records(defense, ds, splits, cfg)
    name, kwargs = target_for(ds.kind, ds.x.shape[1:], ds.num_classes)
    model = TARGETS[name](**defense.architecture(kwargs))
    x, y = torch.from_numpy(ds.x[splits.members]), torch.from_numpy(ds.y[splits.members])
    started = time.perf_counter()
    protection = defense.protect(model, x, y, reference, epochs=cfg.target_epochs, lr=cfg.target_lr,
                                 seed=stream_seed(cfg.seed, "target"), device=cfg.device, progress=progress, log=log,
                                 engine=engine)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "protection.json").unlink(missing_ok=True)  # until it is rewritten, the folder holds no result
    save_array(out / "protected_x.npy", protection.x.numpy())
    save_array(out / "protected_y.npy", y.numpy())
    with atomic_path(out / "records.csv") as tmp:
        with open(tmp, "w") as f:
            f.write("dataset_index,selected,perturbed,distance,loss,round\n")
            for i, idx in enumerate(splits.members):
                f.write(f"{idx},{int(protection.selected[i])},{int(protection.perturbed[i])},"
                        f"{float(protection.distance[i]):.6g},{float(protection.loss[i]):.6g},"
                        f"{int(protection.round_chosen[i])}\n")
    shown = protection.perturbed.nonzero()[:8, 0]
    if len(shown):
        protected_figure(x[shown].numpy(), protection.x[shown].numpy(), protection.distance[shown].numpy(),
                         out / "protected.png", f"{cfg.dataset}: originals and their uploaded copies "
                         f"({defense.generator}, eps {protection.eps:g}, {defense.distance})")
    summary = {"dataset": cfg.dataset, "config": asdict(cfg), "defense": {"name": defense.name,
                                                                         "params": defense.params()},
               "seconds": seconds, **protection.summary()}
    with atomic_path(out / "protection.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def defended_target(run: RunDir, defense: TrainingDefense, *, log: Log = print, progress: bool = False) -> RunDir:
    """The run's target trained again with a training ``defense`` on the same splits, as a run directory of
    its own in targets/NAME-HASH/ (config.json, splits.json, target.safetensors, outputs/, target.json written last),
    where its shadow models and deployed output defenses are cached too. Trained once: a folder made for
    this run's splits and config is reused."""
    folder = run.path / "targets" / defense_key(defense)
    base = data_hash([torch.frombuffer(bytearray((run.path / name).read_bytes()), dtype=torch.uint8)
                      for name in ("splits.json", "config.json")])
    marker = folder / "target.json"
    if marker.is_file() and json.loads(marker.read_text()).get("base") == base:
        return RunDir(folder)
    marker.unlink(missing_ok=True)
    variant = RunDir(folder, create=True)
    cfg = dataclasses.replace(run.config(), training_defense=defense.name, training_params=defense.params())
    meta = stage_target(variant, cfg, splits=run.splits(), log=log, progress=progress)
    variant.write_json("target.json", {"base": base, **meta})
    return variant


def stage_substitute(run: RunDir, cfg: Config, *, log: Log = print, progress: bool = True) -> dict:
    m, n = run.output("members"), run.output("nonmembers")
    ml, nl = run.output("members_labels"), run.output("nonmembers_labels")
    log(f"substitute MIM: {len(m)} members vs {len(n)} non-members, {cfg.mim_epochs} epochs")
    model, history = train_substitute(m, ml, n, nl, epochs=cfg.mim_epochs, seed=stream_seed(cfg.seed, "substitute"),
                                      device=cfg.device, progress=progress)
    meta = {"train_accuracy": history["train_accuracy"], "epochs": cfg.mim_epochs,
            "training_data_sha256": data_hash([m, ml, n, nl])}
    save_substitute(run.path / f"substitute{SUFFIX}", model, meta)
    log(f"substitute MIM: train accuracy {meta['train_accuracy']:.1%}")
    return meta


def split_positions(s: Splits, split_members: list, split_nonmembers: list):
    """Positions of split indices within D_tar / D_tar-bar (the order of the members / non-members files)."""
    pos_in = {idx: i for i, idx in enumerate(s.members)}
    pos_out = {idx: i for i, idx in enumerate(s.nonmembers)}
    return [pos_in[i] for i in split_members], [pos_out[i] for i in split_nonmembers]


def record_positions(run: RunDir, split_members: list, split_nonmembers: list):
    """Positions of split indices within the run's members / non-members output files."""
    return split_positions(run.splits(), split_members, split_nonmembers)


def stage_attack(run: RunDir, cfg: Config, *, log: Log = print, progress: bool = True) -> dict:
    s = run.splits()
    rows_in, rows_out = record_positions(run, s.adversary_members, s.adversary_nonmembers)
    m, n = run.output("members")[rows_in], run.output("nonmembers")[rows_out]
    ml, nl = run.output("members_labels")[rows_in], run.output("nonmembers_labels")[rows_out]
    log(f"adversary MIM0: {len(m)} known members vs {len(n)} known non-members, {cfg.mim_epochs} epochs")
    seed = stream_seed(cfg.seed, "adversary-mim0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mim0 = AttackMIM.mim0(m.shape[1])
    mim0, history = train_substitute(m, ml, n, nl, epochs=cfg.mim_epochs, seed=seed, device=cfg.device,
                                     progress=progress, model=mim0, desc="adversary MIM0")
    meta = {"train_accuracy": history["train_accuracy"], "epochs": cfg.mim_epochs}
    save_model(run.path / f"mim0{SUFFIX}", "attack-mim", mim0, mim0.architecture(), meta)
    log(f"adversary MIM0: train accuracy {meta['train_accuracy']:.1%}")
    return meta


@torch.no_grad()
def _scores(model, probs, labels):
    return model(probs.float(), labels.long()).numpy()


def resolve_defense(name: str, params: Optional[dict], cfg: Config) -> OutputDefense:
    """A new defense ``name`` whose unset hyperparameters come from the run's config where the defense
    says how (AEPPT: the run's eps, T and MIM epochs), else from the defense's defaults."""
    if name not in DEFENSES:
        raise InputError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    run_defaults = getattr(DEFENSES[name], "run_defaults", None)
    merged = {**(run_defaults(cfg.resolved()) if run_defaults else {}), **(params or {})}
    defense = create_defense(name, **merged)
    if defense.kind != "output":
        raise InputError(f"defense {name!r} is a {defense.kind} defense; this needs an output defense")
    return defense


def defense_key(defense) -> str:
    """The directory name of a deployed output defense or a defended target: NAME-HASH of its hyperparameters."""
    params = json.dumps(defense.params(), sort_keys=True)
    return f"{defense.name}-{hashlib.sha256(params.encode()).hexdigest()[:10]}"


def _defender_inputs(cfg: Config, run: RunDir):
    """The target model and the features of D_tar, for defenses that query the target."""
    ds = load_run_dataset(cfg)
    return load_model(checkpoint_file(run.path, "target"), "target")[0], torch.from_numpy(ds.x[run.splits().members])


def deploy_defense(run: RunDir, defense: OutputDefense, *, refresh: bool = False, log: Log = print,
                   progress: bool = False) -> tuple:
    """The defense as the defender deploys it on this run: fitted (unless it is already) on the target's
    outputs on D_tar (members) and D_tar-bar (non-members), then applied to every one of them.

    Cached in defenses/NAME-HASH/ (defense.pt, members.npy, nonmembers.npy, summary.json, written
    atomically, summary last); a cache made for another target is not used. ``refresh`` redoes it, and
    so does a defense handed in already fitted (that model is the one to deploy).
    Returns (fitted defense, {"members": served, "nonmembers": served}, summary).
    """
    cfg = run.config().resolved()
    folder = run.path / "defenses" / defense_key(defense)
    fingerprint = run.fingerprint()
    summary_path = folder / "summary.json"
    refresh = refresh or (bool(defense.uses) and defense.fitted)
    if not refresh and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("run_fingerprint") == fingerprint:
            served = {s: torch.from_numpy(np.load(folder / f"{s}.npy", allow_pickle=False))
                      for s in ("members", "nonmembers")}
            return load_defense(checkpoint_file(folder, "defense")), served, summary
    folder.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)  # until the new summary is written, the folder is not a cache
    raw = {s: run.output(s) for s in ("members", "nonmembers")}
    labels = {s: run.output(f"{s}_labels").long() for s in ("members", "nonmembers")}
    if not defense.fitted:
        log(f"{defense.name}: fitting on {len(raw['members'])} members and {len(raw['nonmembers'])} non-members")
        target, inputs = _defender_inputs(cfg, run) if "target" in defense.uses else (None, None)
        defense.fit(raw["members"], labels["members"], raw["nonmembers"], labels["nonmembers"], target=target,
                    inputs=inputs, seed=stream_seed(cfg.seed, "defense-fit"), device=cfg.device, progress=progress)
    device = torch.device(cfg.device)
    served, stats, seconds = {}, {}, 0.0
    for index, split in enumerate(("members", "nonmembers")):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        res = defense.defend(raw[split].to(device), generator=stream(cfg.seed, "deployed-defense", index))
        served[split] = res.defended.cpu()
        seconds += time.perf_counter() - started
        stats[split] = res.summary()
    n_total = sum(v["n"] for v in stats.values())
    acc = lambda p, y: float((p.argmax(1) == y).float().mean())  # noqa: E731
    summary = {"name": defense.name, "params": defense.params(), "key": folder.name, "run_fingerprint": fingerprint,
               "target": {"train_accuracy": {"without": acc(raw["members"], labels["members"]),
                                             "with": acc(served["members"], labels["members"])},
                          "test_accuracy": {"without": acc(raw["nonmembers"], labels["nonmembers"]),
                                            "with": acc(served["nonmembers"], labels["nonmembers"])}},
               "perturbation": {"mean_l1": sum(v["mean_l1"] * v["n"] for v in stats.values()) / n_total,
                                "max_l1": max(v["max_l1"] for v in stats.values()),
                                "label_flips": sum(v["label_flips"] for v in stats.values()),
                                **{k: sum(v[k] * v["n"] for v in stats.values()) / n_total
                                   for k in stats["members"] if k.endswith("_rate")}},
               "defense": {"predictions": n_total, "seconds": seconds,
                           "predictions_per_s": n_total / seconds if seconds > 0 else float("inf"), "device": cfg.device}}
    defense.save(folder / f"defense{SUFFIX}", meta={"run": str(run.path), "key": folder.name})
    for split in served:
        save_array(folder / f"{split}.npy", served[split].numpy())
    with atomic_path(summary_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return defense, served, summary


def stage_defend(run: RunDir, cfg: Config, *, log: Log = print) -> dict:
    """AEPPT with the run's substitute MIM on every output (`deploy_defense`), and the run's MIM0 on the
    scored records without and with it."""
    cfg = cfg.resolved()
    substitute, _ = load_substitute(checkpoint_file(run.path, "substitute"))
    mim0, _ = load_model(checkpoint_file(run.path, "mim0"), "attack-mim")
    defense = AEPPT.from_substitute(substitute, **AEPPT.run_defaults(cfg))
    _, served, summary = deploy_defense(run, defense, refresh=True, log=log)
    s = run.splits()
    rows_in, rows_out = record_positions(run, s.eval_members, s.eval_nonmembers)
    lab_in, lab_out = run.output("members_labels"), run.output("nonmembers_labels")
    raw_in, raw_out = run.output("members"), run.output("nonmembers")
    without = attack_metrics(_scores(mim0, raw_in[rows_in], lab_in[rows_in]),
                             _scores(mim0, raw_out[rows_out], lab_out[rows_out]))
    with_def = attack_metrics(_scores(mim0, served["members"][rows_in], lab_in[rows_in]),
                              _scores(mim0, served["nonmembers"][rows_out], lab_out[rows_out]))
    p = summary["perturbation"]
    results = {
        "dataset": cfg.dataset, "eps": cfg.eps, "iters": cfg.iters, "seed": cfg.seed, "defense_key": summary["key"],
        "target": summary["target"], "mim0": {"without": without, "with": with_def},
        "perturbation": {"mean_l1": p["mean_l1"], "max_l1": p["max_l1"], "label_flips": p["label_flips"],
                         "substitute_decision_flip_rate": p["decision_flipped_rate"]},
        "defense": summary["defense"],
    }
    run.write_json("results.json", results)
    return results


def format_results(r: dict) -> str:
    """The paper's Table 2 / Table 3 shape: target accuracy and MIM0 metrics without and with AEPPT."""
    t, a, p = r["target"], r["mim0"], r["perturbation"]
    pct = lambda v: f"{100 * v:6.1f}%"  # noqa: E731
    lines = [f"{r['dataset']}: AEPPT eps={r['eps']:g}, T={r['iters']}",
             f"{'':28s}{'without defense':>17s}{'with AEPPT':>14s}",
             f"{'target train accuracy':28s}{pct(t['train_accuracy']['without']):>17s}{pct(t['train_accuracy']['with']):>14s}",
             f"{'target test accuracy':28s}{pct(t['test_accuracy']['without']):>17s}{pct(t['test_accuracy']['with']):>14s}"]
    for key, label in [("accuracy", "MIM0 inference accuracy"), ("precision", "MIM0 precision"),
                       ("recall", "MIM0 recall"), ("auc", "MIM0 ROC AUC")]:
        lines.append(f"{label:28s}{pct(a['without'][key]):>17s}{pct(a['with'][key]):>14s}")
    lines += [f"{'mean L1 perturbation':28s}{'-':>17s}{p['mean_l1']:>14.4f}",
              f"{'label flips':28s}{'-':>17s}{p['label_flips']:>14d}",
              f"scored on {a['with']['members']} members + {a['with']['nonmembers']} non-members the adversary did not know; "
              f"defense throughput {r['defense']['predictions_per_s']:,.0f} predictions/s ({r['defense']['device']})"]
    return "\n".join(lines)


def run_demo(cfg: Config, run_dir, *, log: Log = print, progress: bool = True) -> dict:
    cfg = cfg.resolved()
    run = RunDir(run_dir, create=True)
    started = time.perf_counter()
    stage_target(run, cfg, log=log, progress=progress)
    stage_substitute(run, cfg, log=log, progress=progress)
    stage_attack(run, cfg, log=log, progress=progress)
    results = stage_defend(run, cfg, log=log)
    results["total_seconds"] = time.perf_counter() - started
    run.write_json("results.json", results)
    return results
