"""Attack battery on a run directory (made by `run_demo`): every attack without the defense, against AEPPT
as a naive attacker, and as a defense-aware one; the paper's adaptive attacks (sec. 5.8); the step-size
sweep (Tables 3-4) and the adversary's loss during adversarial-prediction generation (Fig. 5).

Who knows what. The attacker knows some members and non-members of the target (the paper's adversary,
sec. 5.2: the run's adversary share) and owns a data pool from the same distribution (its known records
plus the dataset's records outside D_tar and D_tar-bar), on which it trains shadow models. It never sees
the scored records' membership. Attacks learn from one of:

    known   the target's outputs on the known records
    shadow  the shadow models' outputs on the pool (member = the record trained that shadow)
    ood     known members + the target's outputs on corrupted copies of the known non-members (MIM3:
            non-members from another distribution than the defender's D_tar-bar)

Settings. none: fitted on undefended outputs, scores undefended outputs. naive: the same attack scores
the defended outputs (the paper's adversary). aware: the paper's threat model gives the attacker the
algorithm; it fits on defended outputs: the deployed model's answers for its known records, and for its
shadow data, AEPPT with a substitute it trains on its own shadow data (same eps and T).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Dict, Optional

import numpy as np
import torch

from ..attacks import (Flipped, LiRAOffline, MetricAttack, NNAttack, RobustnessAttack, Rounded, noisy_copies,
                       query_labels, shadow_records, train_shadow_models)
from ..attacks.label_only import noise_kind_for
from ..checkpoint import load_model, load_substitute
from ..defenses.aeppt import aeppt, draw_steps
from ..models import TARGETS
from ..ops.reference import aeppt_loop
from ..pipeline import RunDir, load_run_dataset, record_positions
from ..training import predict_proba, train_substitute
from .metrics import attack_metrics, per_class_metrics

Tensor = torch.Tensor


@dataclass
class Records:
    """Members and non-members as an attack sees them, with per-record extras (``context``) for attacks
    that need more than the confidence vector: LiRA's shadow references, the robustness attack's labels."""

    member_probs: Tensor
    member_labels: Tensor
    nonmember_probs: Tensor
    nonmember_labels: Tensor
    member_context: dict = field(default_factory=dict)
    nonmember_context: dict = field(default_factory=dict)

    def fit(self, attack):
        extras = {**{f"member_{k}": v for k, v in self.member_context.items()},
                  **{f"nonmember_{k}": v for k, v in self.nonmember_context.items()}}
        return attack.fit(self.member_probs, self.member_labels, self.nonmember_probs, self.nonmember_labels, **extras)

    def score(self, attack):
        return (attack.score(self.member_probs, self.member_labels, **self.member_context),
                attack.score(self.nonmember_probs, self.nonmember_labels, **self.nonmember_context))


@dataclass
class Entry:
    make: Callable[[int, int, str], object]  # (epochs, seed, device) -> a fresh attack
    source: str                              # known | shadow | ood
    description: str


ATTACKS: Dict[str, Entry] = {
    "gap": Entry(lambda e, s, d: MetricAttack("correctness"), "known",
                 "label-only gap attack: member iff correctly classified (Yeom et al.)"),
    "confidence": Entry(lambda e, s, d: MetricAttack("confidence"), "shadow",
                        "true-class confidence, per-class thresholds from shadow models (Song & Mittal)"),
    "entropy": Entry(lambda e, s, d: MetricAttack("entropy"), "shadow", "prediction entropy, per-class thresholds"),
    "modified_entropy": Entry(lambda e, s, d: MetricAttack("modified_entropy"), "shadow",
                              "modified entropy (Song & Mittal), per-class thresholds"),
    "mim0": Entry(lambda e, s, d: NNAttack("mim0", epochs=e, seed=s, device=d), "known",
                  "the paper's adversary: three-branch network on known records (sec. 5.2)"),
    "mim1": Entry(lambda e, s, d: NNAttack("mim1", epochs=e, seed=s, device=d), "known",
                  "fully connected [1024, 512, 256, 1] (Table 6)"),
    "mim2": Entry(lambda e, s, d: NNAttack("mim2", epochs=e, seed=s, device=d), "known", "MIM0 with an L2 loss"),
    "mim3": Entry(lambda e, s, d: NNAttack("mim0", epochs=e, seed=s, device=d), "ood",
                  "MIM0 whose non-members are corrupted copies of known non-members (another distribution)"),
    # shadow data is K x the pool: larger batches keep the number of steps (and the time) in line
    "shokri": Entry(lambda e, s, d: NNAttack("shokri", epochs=e, batch_size=512, seed=s, device=d), "shadow",
                    "per-class attack networks on shadow-model outputs (Shokri et al.)"),
    "lira": Entry(lambda e, s, d: LiRAOffline(), "known",
                  "offline LiRA: per-record Gaussian of shadow models' logit-scaled confidence (Carlini et al.)"),
    "robustness": Entry(lambda e, s, d: RobustnessAttack(), "known",
                        "label-only: share of noisy copies still labelled correctly (Choquette-Choo et al.)"),
}
#: Attacks that need shadow models: left out of the default list when there are none (--shadows 0).
NEEDS_SHADOWS = tuple(name for name, entry in ATTACKS.items() if entry.source == "shadow") + ("lira",)
ADAPTIVE = ("flip", "rounding", "adversarial_training", "averaging")


@dataclass
class Options:
    """How hard the attacker works. shadows: shadow models (LiRA, Shokri, metric thresholds, aware
    calibration); queries: repeated queries averaged by the averaging attack; noisy_copies / noise: the
    robustness attack's queries per record and noise strength (bit-flip probability or Gaussian sigma;
    MIM3 corrupts with 5x that); sweep: eps multiples of the step-size sweep."""

    epochs: int = 100
    shadows: int = 6
    queries: int = 8
    noisy_copies: int = 20
    noise: Optional[float] = None
    sweep: tuple = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


class Battery:
    """Everything the attacks need, computed once and only when an attack asks for it."""

    def __init__(self, run_dir, options: Options, *, log: Optional[Callable[[str], None]] = None,
                 progress: bool = False):
        self.run = RunDir(run_dir)
        self.cfg, self.splits = self.run.config().resolved(), self.run.splits()
        self.opt, self.progress = options, progress
        self.log = log or (lambda message: None)
        self.eps = self.cfg.eps
        self.seed = self.cfg.seed + 2
        self._cache: dict = {}

    # ----------------------------------------------------------------- what the target answers
    def _rows(self, members, nonmembers):
        return record_positions(self.run, members, nonmembers)

    def _target_records(self, rows, suffix: str) -> Records:
        r_in, r_out = rows
        lab_in, lab_out = self.run.output("members_labels"), self.run.output("nonmembers_labels")
        return Records(self.run.output("members" + suffix)[r_in], lab_in[r_in].long(),
                       self.run.output("nonmembers" + suffix)[r_out], lab_out[r_out].long())

    @cached_property
    def known_rows(self):
        return self._rows(self.splits.adversary_members, self.splits.adversary_nonmembers)

    @cached_property
    def scored_rows(self):
        return self._rows(self.splits.eval_members, self.splits.eval_nonmembers)

    def target_outputs(self, which: str, defended: bool) -> Records:
        """The target's answers on the ``known`` or ``scored`` records, undefended or as deployed."""
        return self._target_records(self.known_rows if which == "known" else self.scored_rows,
                                    "_defended" if defended else "")

    @cached_property
    def deployed(self):
        return load_substitute(self.run.path / "substitute.pt")[0]

    def defend(self, probs: Tensor, mim, seed: int, *, eps: Optional[float] = None) -> Tensor:
        """AEPPT as deployed (Algorithm 1, the run's eps and T) with substitute ``mim``."""
        if len(probs) == 0:
            return probs
        gen = torch.Generator().manual_seed(seed)  # a CPU generator: the same steps on any device
        return aeppt(probs.float().to(self.cfg.device), mim, self.eps if eps is None else eps, self.cfg.iters,
                     generator=gen, chunk_size=self.cfg.batch).adversarial.cpu()

    # ----------------------------------------------------------------- the attacker's own data
    @cached_property
    def dataset(self):
        return load_run_dataset(self.cfg)

    @cached_property
    def target(self):
        return load_model(self.run.path / "target.pt", "target")

    def features(self, indices) -> Tensor:
        return torch.from_numpy(self.dataset.x[np.asarray(indices, dtype=np.int64)])

    @cached_property
    def pool(self) -> np.ndarray:
        """Dataset indices the attacker owns: its known records and every record outside D_tar, D_tar-bar."""
        s = self.splits
        used = np.zeros(len(self.dataset), dtype=bool)
        used[s.members] = used[s.nonmembers] = True
        return np.concatenate([s.adversary_members, s.adversary_nonmembers, np.flatnonzero(~used)]).astype(np.int64)

    @cached_property
    def shadows(self):
        if self.opt.shadows < 1:
            raise ValueError(f"shadows: {', '.join(NEEDS_SHADOWS)} need shadow models, got shadows=0")
        architecture = dict(self.target[1]["architecture"])
        name = architecture.pop("name")
        train_size = min(len(self.splits.members), len(self.pool) // 2)
        started = time.perf_counter()
        shadows = train_shadow_models(lambda: TARGETS[name](**architecture), self.features(self.pool),
                                      self.dataset.y[self.pool], num_shadows=self.opt.shadows,
                                      train_size=train_size, epochs=self.cfg.target_epochs, lr=self.cfg.target_lr,
                                      seed=self.seed, device=self.cfg.device, progress=self.progress)
        self.log(f"{self.opt.shadows} shadow models on {train_size} of {len(self.pool)} pool records: "
                 f"{time.perf_counter() - started:.0f} s")
        return shadows

    @cached_property
    def pool_outputs(self) -> Tensor:
        return self.shadows.predict(self.features(self.pool), device=self.cfg.device)

    def shadow_data(self, defended: bool) -> Records:
        m, ml, n, nl = shadow_records(self.own_defended_pool if defended else self.pool_outputs,
                                      torch.from_numpy(self.dataset.y[self.pool]).long(), self.shadows.in_mask)
        return Records(m, ml, n, nl)

    @cached_property
    def own_substitute(self):
        """The aware attacker's substitute MIM, trained like the defender's but on its shadow data."""
        shadow = self.shadow_data(defended=False)
        model, _ = train_substitute(shadow.member_probs, shadow.member_labels, shadow.nonmember_probs,
                                    shadow.nonmember_labels, epochs=self.cfg.mim_epochs, batch_size=512, seed=self.seed,
                                    device=self.cfg.device, progress=self.progress, desc="attacker's substitute")
        return model

    def own_defend(self, probs: Tensor) -> Tensor:
        """AEPPT run by the attacker on its own outputs [..., C] with its own substitute."""
        flat = probs.reshape(-1, probs.shape[-1])
        return self.defend(flat, self.own_substitute, self.seed + 7).reshape(probs.shape)

    @cached_property
    def own_defended_pool(self) -> Tensor:
        return self.own_defend(self.pool_outputs)

    # ----------------------------------------------------------------- per-record extras
    def _split_indices(self, which: str):
        s = self.splits
        return ((s.adversary_members, s.adversary_nonmembers) if which == "known"
                else (s.eval_members, s.eval_nonmembers))

    @cached_property
    def _pool_position(self) -> dict:
        return {int(idx): i for i, idx in enumerate(self.pool)}

    def _memo(self, key: tuple, compute: Callable[[], tuple]) -> tuple:
        """Per-battery cache: several settings score the same served records."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def reference(self, which: str, defended: bool) -> tuple:
        """LiRA's reference: shadow outputs on the same records, [K, n, C] per side, and for known records
        (which are in the pool) the mask of shadows that did not train on them."""
        return self._memo(("reference", which, defended), lambda: self._reference(which, defended))

    def _reference(self, which: str, defended: bool) -> tuple:
        out = []
        for indices in self._split_indices(which):
            if which == "known":
                pos = torch.tensor([self._pool_position[int(i)] for i in indices], dtype=torch.long)
                ref = (self.own_defended_pool if defended else self.pool_outputs)[:, pos]
                out.append({"reference": ref, "reference_mask": ~self.shadows.in_mask[:, pos]})
            else:
                ref = self.shadows.predict(self.features(indices), device=self.cfg.device)
                out.append({"reference": self.own_defend(ref) if defended else ref})
        return tuple(out)

    @cached_property
    def noise(self) -> tuple:
        x = self.features(self.pool[: min(len(self.pool), 1000)])
        kind = noise_kind_for(x)
        return kind, self.opt.noise if self.opt.noise is not None else (0.02 if kind == "bitflip" else 0.05)

    def _target_predict(self, x: Tensor) -> Tensor:
        return predict_proba(self.target[0], x, device=self.cfg.device)

    def noisy_labels(self, which: str, defended: bool) -> tuple:
        """Labels the target (defended: as deployed) gives noisy copies of each record, [copies, n]."""
        return self._memo(("noisy_labels", which, defended), lambda: self._noisy_labels(which, defended))

    def _noisy_labels(self, which: str, defended: bool) -> tuple:
        kind, strength = self.noise
        out = []
        for side, indices in enumerate(self._split_indices(which)):
            gen = torch.Generator().manual_seed(self.seed + 11 + side + (2 if which == "known" else 0))
            noisy = noisy_copies(self.features(indices), kind=kind, strength=strength, copies=self.opt.noisy_copies,
                                 generator=gen)
            predict = self._target_predict
            if defended:
                predict = lambda x: self.defend(self._target_predict(x), self.deployed, self.seed + 13)  # noqa: E731
            out.append({"noisy_labels": query_labels(predict, noisy)})
        return tuple(out)

    def ood_data(self, defended: bool) -> Records:
        """MIM3's data: known members, and as non-members the target's answers on corrupted copies of the
        known non-members (5x the robustness attack's noise)."""
        known = self.target_outputs("known", defended)
        kind, strength = self.noise
        gen = torch.Generator().manual_seed(self.seed + 17)
        corrupted = noisy_copies(self.features(self.splits.adversary_nonmembers), kind=kind,
                                 strength=min(5 * strength, 0.5), copies=1, generator=gen)[0]
        probs = self._target_predict(corrupted)
        if defended:
            probs = self.defend(probs, self.deployed, self.seed + 19)
        return Records(known.member_probs, known.member_labels, probs, known.nonmember_labels)

    # ----------------------------------------------------------------- putting it together
    def fit_data(self, source: str, defended: bool, attack) -> Records:
        if source == "shadow":
            return self.shadow_data(defended)
        recs = self.ood_data(defended) if source == "ood" else self.target_outputs("known", defended)
        self._add_context(recs, "known", attack, reference_defended=defended, labels_defended=defended)
        return recs

    def scored_data(self, setting: str, attack) -> Records:
        """The scored records as served in ``setting``. LiRA's references are defended only by the aware
        attacker (it alone runs AEPPT itself); noisy-query labels are whatever the target serves."""
        recs = self.target_outputs("scored", defended=setting != "none")
        self._add_context(recs, "scored", attack, reference_defended=setting == "aware",
                          labels_defended=setting != "none")
        return recs

    def _add_context(self, recs: Records, which: str, attack, *, reference_defended: bool,
                     labels_defended: bool) -> None:
        if getattr(attack, "needs_reference", False):
            recs.member_context, recs.nonmember_context = self.reference(which, reference_defended)
        if getattr(attack, "needs_noisy_labels", False):
            recs.member_context, recs.nonmember_context = self.noisy_labels(which, labels_defended)


def measure(attack, scored: Records, *, per_class: bool = True) -> tuple:
    """(attack_metrics at the attack's threshold, with per-class accuracy/precision/recall unless
    ``per_class`` is False; the member and non-member scores)."""
    s_in, s_out = scored.score(attack)
    m = attack_metrics(s_in, s_out, threshold=attack.threshold)
    if not per_class:
        return m, (s_in, s_out)
    per_class = per_class_metrics(s_in, scored.member_labels.numpy(), s_out, scored.nonmember_labels.numpy(),
                                  threshold=attack.threshold)
    for key in ("accuracy", "precision", "recall"):
        m[f"per_class_{key}"] = {c: v[key] for c, v in per_class.items()}
    return m, (s_in, s_out)


def run_attack(battery: Battery, name: str) -> tuple:
    """One attack in the three settings: ({setting: metrics}, {setting: (member scores, non-member scores)},
    the attack fitted on undefended data)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    entry, opt = ATTACKS[name], battery.opt
    make = lambda: entry.make(opt.epochs, battery.seed, battery.cfg.device)  # noqa: E731
    naive = make()
    battery.fit_data(entry.source, False, naive).fit(naive)
    aware = make()
    battery.fit_data(entry.source, True, aware).fit(aware)
    results, scores = {}, {}
    for setting, attack in [("none", naive), ("naive", naive), ("aware", aware)]:
        results[setting], scores[setting] = measure(attack, battery.scored_data(setting, attack))
    return results, scores, naive


def run_adaptive(battery: Battery, fitted_mim0: Optional[NNAttack] = None) -> dict:
    """Xue et al.'s adaptive attacks (sec. 5.8, Table 8) around MIM0, plus repeated-query averaging, all
    scored on the defended outputs. flip: naive MIM0 with its decisions flipped. rounding: MIM0 fitted and
    applied on outputs rounded to 3 decimals (fitted on the deployed answers for the known records).
    adversarial_training: MIM0 fitted on Algorithm 1's output for the known records, made with a substitute
    the attacker trains on those records. averaging: each record queried ``queries`` times (fresh random
    steps each time), answers averaged, MIM0 fitted and applied on averages."""
    opt, seed = battery.opt, battery.seed
    make = lambda: NNAttack("mim0", epochs=opt.epochs, seed=seed, device=battery.cfg.device)  # noqa: E731
    known_raw = battery.target_outputs("known", False)
    scored_def = battery.target_outputs("scored", True)
    if fitted_mim0 is None:
        fitted_mim0 = known_raw.fit(make())
    def metrics(attack, scored: Records) -> dict:
        return measure(attack, scored, per_class=False)[0]

    out = {"flip": metrics(Flipped(fitted_mim0), scored_def),
           "rounding": metrics(battery.target_outputs("known", True).fit(Rounded(make(), decimals=3)), scored_def)}

    own, _ = train_substitute(known_raw.member_probs, known_raw.member_labels, known_raw.nonmember_probs,
                              known_raw.nonmember_labels, epochs=battery.cfg.mim_epochs, seed=seed + 23,
                              device=battery.cfg.device, progress=False, desc="attacker's substitute")
    trained = Records(battery.defend(known_raw.member_probs, own, seed + 29), known_raw.member_labels,
                      battery.defend(known_raw.nonmember_probs, own, seed + 31), known_raw.nonmember_labels)
    out["adversarial_training"] = metrics(trained.fit(make()), scored_def)

    def averaged(recs: Records, base_seed: int) -> Records:
        mean = lambda p, s: torch.stack([battery.defend(p, battery.deployed, s + q)  # noqa: E731
                                         for q in range(opt.queries)]).mean(0)
        return Records(mean(recs.member_probs, base_seed), recs.member_labels,
                       mean(recs.nonmember_probs, base_seed + 1000), recs.nonmember_labels)

    known_avg = averaged(known_raw, seed + 37)
    scored_avg = averaged(battery.target_outputs("scored", False), seed + 41)
    out["averaging"] = metrics(known_avg.fit(make()), scored_avg)
    return out


def step_size_sweep(battery: Battery, fitted_mim0: NNAttack) -> list:
    """Tables 3-4 of the paper: for eps in multiples of the run's eps, the mean L1 size of the perturbation,
    the naive MIM0's inference accuracy, and a defense-aware confidence attack (per-class thresholds
    refitted on the deployed answers for the known records at that eps)."""
    known_raw, scored_raw = battery.target_outputs("known", False), battery.target_outputs("scored", False)
    rows = []
    for k, factor in enumerate(battery.opt.sweep):
        eps = factor * battery.eps
        def d(p, s, k=k, eps=eps):
            return battery.defend(p, battery.deployed, battery.seed + 43 + 10 * k + s, eps=eps)

        scored = Records(d(scored_raw.member_probs, 0), scored_raw.member_labels, d(scored_raw.nonmember_probs, 1),
                         scored_raw.nonmember_labels)
        known = Records(d(known_raw.member_probs, 2), known_raw.member_labels, d(known_raw.nonmember_probs, 3),
                        known_raw.nonmember_labels)
        l1 = torch.cat([(scored.member_probs - scored_raw.member_probs).abs().sum(1),
                        (scored.nonmember_probs - scored_raw.nonmember_probs).abs().sum(1)])
        naive = measure(fitted_mim0, scored)[0]
        aware = measure(known.fit(MetricAttack("confidence")), scored)[0]
        rows.append({"eps": eps, "mean_l1": float(l1.mean()), "mim0_accuracy": naive["accuracy"],
                     "mim0_precision": naive["precision"], "mim0_recall": naive["recall"],
                     "mim0_auc_leak": naive["auc_leak"], "aware_confidence_accuracy": aware["accuracy"],
                     "aware_confidence_auc_leak": aware["auc_leak"]})
    return rows


def attacker_loss_curve(battery: Battery, fitted_mim0: NNAttack, *, points: int = 21) -> dict:
    """Fig. 5 of the paper: the adversary's MIM0 loss (binary cross-entropy against true membership) on the
    scored records' outputs as Algorithm 1 runs, at ``points`` iterations from 0 to T. Runs the plain
    PyTorch reference of the fused op (`aeppt_loop`) to look inside the loop."""
    scored = battery.target_outputs("scored", False)
    probs = torch.cat([scored.member_probs, scored.nonmember_probs]).float()
    labels = torch.cat([scored.member_labels, scored.nonmember_labels])
    member = torch.cat([torch.ones(len(scored.member_labels)), torch.zeros(len(scored.nonmember_labels))])
    folded = battery.deployed.fold()
    iters = battery.cfg.iters
    record_at = sorted({round(i * iters / (points - 1)) for i in range(points)})
    curve = {}

    @torch.no_grad()
    def record(t: int, adv: Tensor) -> None:
        if t in record_at:
            z = fitted_mim0.model.logit(adv, labels)
            curve[t] = float(torch.nn.functional.binary_cross_entropy_with_logits(z, member))

    steps = draw_steps(iters, len(probs), battery.eps, generator=torch.Generator().manual_seed(battery.seed + 47))
    aeppt_loop(probs, folded.logit, steps, on_step=record)
    return {"iteration": list(curve), "loss": list(curve.values())}


def evaluate_run(run_dir, *, attacks=None, adaptive: bool = True, sweep: bool = True,
                 options: Optional[Options] = None, log: Optional[Callable[[str], None]] = None,
                 progress: bool = False) -> dict:
    """Run the battery on a run made by `run_demo` (needs its outputs/*_defended.npy); saves
    evaluation.json and the report (evaluation.md, evaluation.html, PNG figures) in the run directory."""
    log = log or (lambda message: None)
    options = options or Options()
    if attacks is None:
        names = [name for name in ATTACKS if options.shadows > 0 or name not in NEEDS_SHADOWS]
    else:
        names = list(attacks)
    for name in names:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    battery = Battery(run_dir, options, log=log, progress=progress)
    started = time.perf_counter()
    results, scores, fitted = {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        results[name], scores[name], fitted[name] = run_attack(battery, name)
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
    needs_mim0 = adaptive or sweep
    mim0 = fitted.get("mim0")
    if needs_mim0 and mim0 is None:
        mim0 = battery.target_outputs("known", False).fit(ATTACKS["mim0"].make(options.epochs, battery.seed,
                                                                                 battery.cfg.device))
    out = {"dataset": battery.cfg.dataset, "eps": battery.eps, "iters": battery.cfg.iters,
           "known_members": len(battery.splits.adversary_members),
           "known_nonmembers": len(battery.splits.adversary_nonmembers),
           "scored_members": len(battery.splits.eval_members), "scored_nonmembers": len(battery.splits.eval_nonmembers),
           "options": {"epochs": options.epochs, "shadows": options.shadows, "queries": options.queries,
                       "noisy_copies": options.noisy_copies},
           "descriptions": {name: ATTACKS[name].description for name in names}, "attacks": results}
    if "shadows" in battery.__dict__:
        out["shadow_pool"] = len(battery.pool)
    if any(name in ("robustness", "mim3") for name in names):
        out["options"]["noise"] = dict(zip(("kind", "strength"), battery.noise))
    if (battery.run.path / "results.json").is_file():
        out["defense"] = battery.run.read_json("results.json")
    if adaptive:
        t0 = time.perf_counter()
        out["adaptive"] = run_adaptive(battery, mim0)
        log(f"adaptive attacks: {time.perf_counter() - t0:.1f} s")
    if sweep:
        t0 = time.perf_counter()
        out["step_size_sweep"] = step_size_sweep(battery, mim0)
        out["attacker_loss"] = attacker_loss_curve(battery, mim0)
        log(f"step-size sweep and loss curve: {time.perf_counter() - t0:.1f} s")
    out["seconds"] = time.perf_counter() - started
    battery.run.write_json("evaluation.json", out)
    from .report import write_report

    write_report(battery.run.path, out, scores)
    return out


def format_evaluation(ev: dict) -> str:
    """The summary table printed by `mia-fast evaluate`: accuracy / AUC per attack and setting."""
    lines = [f"{ev['dataset']}: attacks on {ev['scored_members']} members + {ev['scored_nonmembers']} non-members "
             f"(accuracy / AUC, AUC counted as leakage below 0.5 too)",
             f"{'attack':18s}{'no defense':>16s}{'AEPPT, naive':>16s}{'AEPPT, aware':>16s}"]
    cell = lambda m: f"{100 * m['accuracy']:.1f}% / {100 * m['auc_leak']:.1f}%"  # noqa: E731
    for name, r in ev["attacks"].items():
        lines.append(f"{name:18s}{cell(r['none']):>16s}{cell(r['naive']):>16s}{cell(r['aware']):>16s}")
    if "adaptive" in ev:
        lines.append("adaptive attacks on AEPPT (sec. 5.8): " + ", ".join(
            f"{name} {cell(m)}" for name, m in ev["adaptive"].items()))
    return "\n".join(lines)
