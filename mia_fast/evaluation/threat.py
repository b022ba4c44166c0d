"""Who sees what: the attacker's data on a run directory, without a defense (`ThreatModel`) and in front
of one deployed output defense (`Deployment`).

The attacker knows some members and non-members of the target (the run's adversary share, Xue et al.
sec. 5.2) and owns a data pool from the same distribution (its known records plus the dataset's records
outside D_tar and D_tar-bar), on which it trains shadow models. It never sees the scored records'
membership. Attacks learn from one of the sources of `mia_fast.attacks.registry`.

Settings. none: fitted on undefended outputs, scores undefended outputs. naive: the same attack scores
the defended outputs (the paper's adversary). aware: the attacker knows the defense and its
hyperparameters, makes its own copy from the registry and fits it on its own shadow data (never the
defender's), and fits thresholds and models on defended outputs: the deployed answers for its known
records, its own copy's answers for its shadow outputs and LiRA references.

A target trained with a training defense (the run's ``training_defense``) is attacked by an attacker who
knows it: its shadow models are trained with the same defense and hyperparameters.

Shadow models and their outputs on the pool are computed once per run and cached in shadows/ (keyed by
their number, epochs and seed, and the run's fingerprint); deployed defenses are cached in defenses/.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Optional

import numpy as np
import torch

from ..attacks import boundary_distance, noisy_copies, query_labels, shadow_records, train_shadow_models
from ..attacks.label_only import noise_kind_for
from ..attacks.shadow import ShadowModels
from ..checkpoint import SUFFIX, checkpoint_file, load_model, save_model
from ..defenses import OutputDefense
from ..io import atomic_path, save_array
from ..models import TARGETS
from ..pipeline import (RunDir, defense_key, deploy_defense, load_run_dataset, record_positions, resolve_defense,
                        training_defense)
from ..seeding import stream, stream_seed
from ..training import predict_proba

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

    def with_probs(self, member_probs: Tensor, nonmember_probs: Tensor) -> "Records":
        """The same records and labels with other confidence vectors (no context)."""
        return Records(member_probs, self.member_labels, nonmember_probs, self.nonmember_labels)


@dataclass
class Options:
    """How hard the attacker works. shadows: shadow models (LiRA, Shokri, metric thresholds, aware
    calibration); queries: repeated queries averaged by the averaging attack; noisy_copies / noise: the
    robustness attack's queries per record and noise strength (bit-flip probability or Gaussian sigma;
    MIM3 corrupts with 5x that); boundary_directions: random flip orders / directions of the boundary
    attack per record; sweep: eps multiples of AEPPT's step-size sweep."""

    epochs: int = 100
    shadows: int = 6
    queries: int = 8
    noisy_copies: int = 20
    noise: Optional[float] = None
    boundary_directions: int = 8
    sweep: tuple = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


class ThreatModel:
    """Everything the attacks need that does not depend on the defense, computed once and only when an
    attack asks for it."""

    def __init__(self, run_dir, options: Optional[Options] = None, *, log: Optional[Callable[[str], None]] = None,
                 progress: bool = False, engine=None):
        self.run = RunDir(run_dir)
        self.cfg, self.splits = self.run.config().resolved(), self.run.splits()
        self.opt, self.progress = options or Options(), progress
        self.engine = engine  # where shadow models train (mia_fast.distributed; None: in this process)
        self.log = log or (lambda message: None)
        self.seed = self.cfg.seed
        self._cache: dict = {}

    def memo(self, key: tuple, compute: Callable[[], object]):
        """Per-instance cache: several settings and defenses use the same data."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    # ----------------------------------------------------------------- what the target answers
    @cached_property
    def rows(self) -> dict:
        s = self.splits
        return {"known": record_positions(self.run, s.adversary_members, s.adversary_nonmembers),
                "scored": record_positions(self.run, s.eval_members, s.eval_nonmembers)}

    def select(self, which: str, members: Tensor, nonmembers: Tensor) -> Records:
        """The ``known`` or ``scored`` rows of per-split arrays (D_tar, D_tar-bar order), with labels."""
        r_in, r_out = self.rows[which]
        lab_in, lab_out = self.run.output("members_labels"), self.run.output("nonmembers_labels")
        return Records(members[r_in], lab_in[r_in].long(), nonmembers[r_out], lab_out[r_out].long())

    def target_outputs(self, which: str) -> Records:
        """The target's undefended answers on the ``known`` or ``scored`` records."""
        return self.select(which, self.run.output("members"), self.run.output("nonmembers"))

    @cached_property
    def accuracy(self) -> dict:
        """The target's train (D_tar) and test (D_tar-bar) accuracy, undefended."""
        acc = lambda s: float((self.run.output(s).argmax(1) == self.run.output(f"{s}_labels")).float().mean())  # noqa
        return {"train": acc("members"), "test": acc("nonmembers")}

    # ----------------------------------------------------------------- the attacker's own data
    @cached_property
    def dataset(self):
        return load_run_dataset(self.cfg)

    @cached_property
    def target(self):
        return load_model(checkpoint_file(self.run.path, "target"), "target")

    def features(self, indices) -> Tensor:
        return torch.from_numpy(self.dataset.x[np.asarray(indices, dtype=np.int64)])

    def target_predict(self, x: Tensor) -> Tensor:
        return predict_proba(self.target[0], x, device=self.cfg.device)

    @cached_property
    def pool(self) -> np.ndarray:
        """Dataset indices the attacker owns: its known records and every record outside D_tar, D_tar-bar."""
        s = self.splits
        used = np.zeros(len(self.dataset), dtype=bool)
        used[s.members] = used[s.nonmembers] = True
        return np.concatenate([s.adversary_members, s.adversary_nonmembers, np.flatnonzero(~used)]).astype(np.int64)

    @cached_property
    def pool_labels(self) -> Tensor:
        return torch.from_numpy(self.dataset.y[self.pool]).long()

    @cached_property
    def _shadow_dir(self):
        return self.run.path / "shadows" / f"k{self.opt.shadows}-e{self.cfg.target_epochs}-seed{self.seed}"

    @cached_property
    def shadows(self) -> ShadowModels:
        if self.opt.shadows < 1:
            raise ValueError("shadows: the shadow-model attacks need shadow models, got shadows=0")
        folder, fingerprint = self._shadow_dir, self.run.fingerprint()
        meta = folder / "meta.json"
        if meta.is_file() and json.loads(meta.read_text()).get("run_fingerprint") == fingerprint:
            models = [load_model(checkpoint_file(folder, f"model-{k}"), "target")[0] for k in range(self.opt.shadows)]
            self.log(f"{self.opt.shadows} shadow models from {folder}")
            return ShadowModels(models, torch.from_numpy(np.load(folder / "in_mask.npy")))
        for stale in ("meta.json", "pool_outputs.npy"):  # an interrupted retraining must not look complete
            (folder / stale).unlink(missing_ok=True)
        architecture = dict(self.target[1]["architecture"])
        name = architecture.pop("name")
        train_size = min(len(self.splits.members), len(self.pool) // 2)
        started = time.perf_counter()
        shadows = train_shadow_models(lambda: TARGETS[name](**architecture), self.features(self.pool),
                                      self.dataset.y[self.pool], num_shadows=self.opt.shadows,
                                      train_size=train_size, epochs=self.cfg.target_epochs, lr=self.cfg.target_lr,
                                      seed=self.seed, device=self.cfg.device, progress=self.progress,
                                      defense=training_defense(self.cfg), engine=self.engine)
        self.log(f"{self.opt.shadows} shadow models on {train_size} of {len(self.pool)} pool records: "
                 f"{time.perf_counter() - started:.0f} s (cached in {folder})")
        folder.mkdir(parents=True, exist_ok=True)
        for k, model in enumerate(shadows.models):
            save_model(folder / f"model-{k}{SUFFIX}", "target", model, self.target[1]["architecture"], {"shadow": k})
        save_array(folder / "in_mask.npy", shadows.in_mask.numpy())
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"run_fingerprint": fingerprint, "train_size": train_size,
                                       "pool": len(self.pool)}, indent=2))
        return shadows

    @cached_property
    def pool_outputs(self) -> Tensor:
        """Every shadow model's outputs on the pool, [K, N, C] (cached beside the shadow models)."""
        path = self._shadow_dir / "pool_outputs.npy"
        shadows = self.shadows  # (re)trains them if stale, removing stale outputs
        if path.is_file():
            return torch.from_numpy(np.load(path, allow_pickle=False))
        out = shadows.predict(self.features(self.pool), device=self.cfg.device)
        save_array(path, out.numpy())
        return out

    def shadow_data(self, pool_outputs: Optional[Tensor] = None) -> Records:
        """(shadow, pool record) pairs as members / non-members; ``pool_outputs`` replaces the raw ones."""
        m, ml, n, nl = shadow_records(self.pool_outputs if pool_outputs is None else pool_outputs, self.pool_labels,
                                      self.shadows.in_mask)
        return Records(m, ml, n, nl)

    def split_indices(self, which: str):
        s = self.splits
        return ((s.adversary_members, s.adversary_nonmembers) if which == "known"
                else (s.eval_members, s.eval_nonmembers))

    @cached_property
    def _pool_position(self) -> dict:
        return {int(idx): i for i, idx in enumerate(self.pool)}

    def reference(self, which: str) -> tuple:
        """LiRA's reference per side: shadow outputs on the same records [K, n, C], and for known records
        (which are in the pool) the mask of shadows that did not train on them."""
        return self.memo(("reference", which), lambda: tuple(self._reference(which, side) for side in (0, 1)))

    def _reference(self, which: str, side: int) -> dict:
        indices = self.split_indices(which)[side]
        if which == "known":
            pos = torch.tensor([self._pool_position[int(i)] for i in indices], dtype=torch.long)
            return {"reference": self.pool_outputs[:, pos], "reference_mask": ~self.shadows.in_mask[:, pos]}
        return {"reference": self.shadows.predict(self.features(indices), device=self.cfg.device)}

    @cached_property
    def noise(self) -> tuple:
        x = self.features(self.pool[: min(len(self.pool), 1000)])
        kind = noise_kind_for(x)
        return kind, self.opt.noise if self.opt.noise is not None else (0.02 if kind == "bitflip" else 0.05)

    def noisy_inputs(self, which: str) -> tuple:
        """The robustness attack's noisy copies of each record, [copies, n, ...] per side."""
        def compute():
            kind, strength = self.noise
            return tuple(noisy_copies(self.features(indices), kind=kind, strength=strength,
                                      copies=self.opt.noisy_copies,
                                      generator=stream(self.seed, "noisy-copies", 2 * (which == "known") + side))
                         for side, indices in enumerate(self.split_indices(which)))
        return self.memo(("noisy_inputs", which), compute)

    def noisy_labels(self, which: str) -> tuple:
        """Labels the undefended target gives the noisy copies, [copies, n] per side."""
        return self.memo(("noisy_labels", which), lambda: tuple(
            {"noisy_labels": query_labels(self.target_predict, noisy)} for noisy in self.noisy_inputs(which)))

    def boundary_distance(self, which: str, predict: Optional[Callable[[Tensor], Tensor]] = None) -> tuple:
        """The boundary attack's label-only distances per side, {"boundary_distance": [n]}, with the
        labels ``predict`` serves (default: the undefended target's)."""
        predict = predict or self.target_predict
        kind, _ = self.noise
        radius = float(self.features(self.pool[:1000]).reshape(min(len(self.pool), 1000), -1).norm(dim=1).median())
        return tuple({"boundary_distance": boundary_distance(
            lambda x: predict(x).argmax(1), self.features(indices), labels, kind=kind,
            directions=self.opt.boundary_directions, radius=radius,
            generator=stream(self.seed, "boundary-directions", 2 * (which == "known") + side))}
            for side, (indices, labels) in enumerate(zip(self.split_indices(which), self.split_labels(which))))

    def split_labels(self, which: str) -> tuple:
        return tuple(torch.from_numpy(self.dataset.y[np.asarray(i, dtype=np.int64)]).long()
                     for i in self.split_indices(which))

    @cached_property
    def ood_probs(self) -> Tensor:
        """MIM3's non-members: the target's answers on corrupted copies of the known non-members (5x the
        robustness attack's noise)."""
        kind, strength = self.noise
        corrupted = noisy_copies(self.features(self.splits.adversary_nonmembers), kind=kind,
                                 strength=min(5 * strength, 0.5), copies=1,
                                 generator=stream(self.seed, "ood-corruption"))[0]
        return self.target_predict(corrupted)

    def ood_data(self) -> Records:
        known = self.target_outputs("known")
        return Records(known.member_probs, known.member_labels, self.ood_probs, known.nonmember_labels)


class Deployment:
    """One output defense as the defender deploys it on the run (fitted on D_tar / D_tar-bar outputs,
    cached in defenses/), and as the aware attacker copies it (same name and hyperparameters, fitted on
    its own shadow data)."""

    def __init__(self, threat: ThreatModel, name: str, params: Optional[dict] = None):
        self.threat = threat
        self.defense = resolve_defense(name, params, threat.cfg)
        self.name, self.key = name, defense_key(self.defense)

    @cached_property
    def _deployed(self) -> tuple:
        t = self.threat
        started = time.perf_counter()
        out = deploy_defense(t.run, self.defense, log=t.log, progress=t.progress)
        t.log(f"{self.name}: deployed ({out[2]['key']}, mean L1 {out[2]['perturbation']['mean_l1']:.3f}, "
              f"{time.perf_counter() - started:.0f} s)")
        return out

    @property
    def deployed(self) -> OutputDefense:
        return self._deployed[0]

    @property
    def summary(self) -> dict:
        return self._deployed[2]

    def served(self, which: str) -> Records:
        """The deployed answers on the ``known`` or ``scored`` records."""
        served = self._deployed[1]
        return self.threat.select(which, served["members"], served["nonmembers"])

    def serve(self, probs: Tensor, purpose: str, index: int = 0) -> Tensor:
        """The deployed defense on other answers of the target (noisy queries, repeated queries)."""
        if len(probs) == 0:
            return probs
        device = self.threat.cfg.device
        return self.deployed.defend(probs.float().to(device), generator=stream(self.threat.seed, purpose, index),
                                    check_inputs=False).defended.cpu()

    # ----------------------------------------------------------------- the aware attacker's own copy
    def attacker_copy(self, data: Callable[[], Records], purpose: str) -> OutputDefense:
        """A copy of the defense as the attacker makes one: the same name and hyperparameters, fitted on
        ``data()`` (records it owns) and, where the defense queries the target, on one of its shadow
        models standing in for it (the attacker never holds the target model itself)."""
        t = self.threat
        copy = resolve_defense(self.name, self.defense.params(), t.cfg)
        if copy.uses:
            recs = data() if "outputs" in copy.uses else t.target_outputs("known")
            target, inputs = ((t.shadows.models[0], t.features(t.pool)) if "target" in copy.uses else (None, None))
            copy.fit(recs.member_probs, recs.member_labels, recs.nonmember_probs, recs.nonmember_labels,
                     target=target, inputs=inputs, seed=stream_seed(t.seed, purpose), device=t.cfg.device,
                     progress=t.progress)
        return copy

    @cached_property
    def own(self) -> OutputDefense:
        """The aware attacker's copy, fitted on its shadow data."""
        return self.attacker_copy(self.threat.shadow_data, "attacker-defense-fit")

    def own_defend(self, probs: Tensor, index: int) -> Tensor:
        """The attacker's copy on its own outputs [..., C]."""
        flat = probs.reshape(-1, probs.shape[-1]).float().to(self.threat.cfg.device)
        out = self.own.defend(flat, generator=stream(self.threat.seed, "attacker-defense", index), check_inputs=False)
        return out.defended.cpu().reshape(probs.shape)

    @cached_property
    def own_defended_pool(self) -> Tensor:
        return self.own_defend(self.threat.pool_outputs, 0)

    def shadow_data(self) -> Records:
        return self.threat.shadow_data(self.own_defended_pool)

    def reference(self, which: str) -> tuple:
        """LiRA's references as the aware attacker makes them: defended with its own copy."""
        def compute():
            out = []
            for side, ref in enumerate(self.threat.reference(which)):
                if which == "known":  # the known records are in the pool: their defended outputs are there
                    pos = torch.tensor([self.threat._pool_position[int(i)]
                                        for i in self.threat.split_indices(which)[side]], dtype=torch.long)
                    out.append({**ref, "reference": self.own_defended_pool[:, pos]})
                else:
                    out.append({"reference": self.own_defend(ref["reference"], 1 + side)})
            return tuple(out)
        return self.threat.memo(("reference", which, self.key), compute)

    def noisy_labels(self, which: str) -> tuple:
        """Labels the deployed defense serves for the noisy copies. A defense that keeps every label
        (``keeps_label``) serves the target's own labels, so they are not recomputed."""
        if getattr(self.defense, "keeps_label", False):
            return self.threat.noisy_labels(which)

        def compute():
            out = []
            for side, noisy in enumerate(self.threat.noisy_inputs(which)):
                index = 2 * (which == "known") + side
                predict = lambda x, i=index: self.serve(self.threat.target_predict(x), "noisy-queries-defended", i)  # noqa
                out.append({"noisy_labels": query_labels(predict, noisy)})
            return tuple(out)
        return self.threat.memo(("noisy_labels", which, self.key), compute)

    def boundary_distance(self, which: str) -> tuple:
        """The boundary attack's distances with the labels the deployed defense serves (the target's own
        when the defense keeps every label)."""
        if getattr(self.defense, "keeps_label", False):
            return self.threat.memo(("boundary", which), lambda: self.threat.boundary_distance(which))
        queries, known = itertools.count(), int(which == "known")

        def predict(x):  # every batch of queries gets its own draws of the defense's randomness
            return self.serve(self.threat.target_predict(x), "boundary-defended", 2 * next(queries) + known)

        return self.threat.memo(("boundary", which, self.key), lambda: self.threat.boundary_distance(which, predict))

    def ood_data(self) -> Records:
        known = self.served("known")
        return Records(known.member_probs, known.member_labels,
                       self.serve(self.threat.ood_probs, "ood-defended"), known.nonmember_labels)
