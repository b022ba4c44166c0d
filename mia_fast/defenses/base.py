"""One interface for every defense, and the registry they are created from (in Opacus' style).

An `OutputDefense` changes what the target serves: ``fit`` on the defender's own data (the target's
outputs on its members and non-members, with labels; the target model itself where the defense
queries it), then ``defend(probs)`` for every answer. A `TrainingDefense` changes how the target is
trained. Hyperparameters are keyword-only, validated in the constructor, shown by ``repr``, and are
all a defense needs to be made again: the registry creates it by name, an aware attacker makes its
own copy the same way, and a checkpoint stores the name, the hyperparameters and the fitted state.

>>> from mia_fast.defenses import create_defense
>>> rounding = create_defense("rounding", decimals=1)
>>> rounding
Rounding(decimals=1)
>>> rounding.defend(torch.tensor([[0.62, 0.38]])).defended.tolist()
[[0.6000000238418579, 0.4000000059604645]]
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, Optional, Type

import torch
from torch import nn

from ..checkpoint import load_payload, save_payload
from ..errors import CheckpointError, InputError
from ..validation import check_probabilities
from .keyed import check_key, keyed_uniform, new_key

Tensor = torch.Tensor


@dataclass
class DefenseResult:
    """Defended confidence vectors and what the defense did to each.

    Attributes:
        defended: the vectors as served [B, C].
        l1: ||defended - original||_1 per sample [B].
        label_changed: argmax changed, per sample [B].
        extras: further per-sample flags or values of a defense (AEPPT: ``decision_flipped``), summarised
            as their mean.
    """

    defended: Tensor
    l1: Tensor
    label_changed: Tensor
    extras: Dict[str, Tensor] = field(default_factory=dict)

    def summary(self) -> dict:
        """n, mean and max L1, label flips, and the mean of each extra."""
        n = self.l1.numel()
        out = {"n": n, "mean_l1": float(self.l1.mean()) if n else 0.0, "max_l1": float(self.l1.max()) if n else 0.0,
               "label_flips": int(self.label_changed.sum())}
        for key, value in self.extras.items():
            out[f"{key}_rate"] = float(value.float().mean()) if n else 0.0
        return out


class Defense:
    """What every defense has: a registry ``name``, a ``kind`` and keyword-only hyperparameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line, for listings

    def params(self) -> dict:
        """The hyperparameters, exactly as ``create_defense(self.name, **params)`` takes them."""
        return {key: getattr(self, key) for key in hyperparameters(type(self))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


class OutputDefense(Defense):
    """A defense on the served confidence vectors.

    Subclasses set ``name`` and implement ``_defend(probs, generator)``; those that learn something
    implement ``_fit`` and ``state_dict``/``load_state_dict``. Class attributes tell the evaluation
    what the defense is: ``randomized`` (repeated queries get different answers, so averaging them is an
    attack), ``uses`` ("outputs": fits on the defender's outputs, "target": queries the target model),
    ``adaptive_attacks`` (attacks that only make sense against this defense, beyond the ones every
    defense faces), ``keeps_label`` (the method never changes the argmax, so label-only queries need not
    go through it). A randomized defense with a ``keyed`` hyperparameter draws, when it is true, from a
    keyed hash of each query (`mia_fast.defenses.keyed`): the key is made by ``fit`` and saved with the
    defense, and the same query always gets the same answer.
    """

    kind = "output"
    randomized: ClassVar[bool] = False
    keeps_label: ClassVar[bool] = False
    uses: ClassVar[frozenset] = frozenset()
    adaptive_attacks: ClassVar[tuple] = ()

    def fit(self, member_probs: Tensor, member_labels: Tensor, nonmember_probs: Tensor, nonmember_labels: Tensor,
            *, target: Optional[nn.Module] = None, inputs: Optional[Tensor] = None, seed: int = 0,
            device: str = "cpu", progress: bool = False) -> "OutputDefense":
        """Fit on the defender's own data: the target's outputs on members and non-members with their
        labels; ``target`` and some of its ``inputs`` for defenses that query the target. Deterministic
        from ``seed``. A no-op for defenses that learn nothing."""
        if "target" in self.uses and (target is None or inputs is None):
            raise InputError(f"{self.name}: fit needs the target model and some of its inputs (target=, inputs=)")
        self._fit(member_probs, member_labels, nonmember_probs, nonmember_labels, target=target, inputs=inputs,
                  seed=seed, device=device, progress=progress)
        if self.is_keyed:
            self.query_key = new_key(seed)
        self._fitted = True
        return self

    @property
    def is_keyed(self) -> bool:
        return bool(getattr(self, "keyed", False))

    def keyed_uniform(self, probs: Tensor, count: int) -> Tensor:
        """[count, B] uniforms from the keyed hash of each row of ``probs`` (a ``keyed`` defense only)."""
        key = getattr(self, "query_key", None)
        if key is None:
            raise RuntimeError(f"{self!r}: keyed, but it has no key (fit it, or load a saved one)")
        return keyed_uniform(probs, key, count)

    def _fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, target, inputs, seed, device,
             progress) -> None:
        """Learn from the defender's data; nothing by default."""

    @property
    def num_classes(self) -> Optional[int]:
        """The number of classes the fitted defense expects (None: any)."""
        return None

    @property
    def fitted(self) -> bool:
        return not self.uses or getattr(self, "_fitted", False)

    def defend(self, probs: Tensor, *, generator: Optional[torch.Generator] = None,
               check_inputs: bool = True) -> DefenseResult:
        """Defend confidence vectors [B, C] (CPU or CUDA); ``generator`` (a CPU torch.Generator) makes a
        randomized defense reproducible on any device."""
        if not self.fitted:
            raise RuntimeError(f"{self!r} is not fitted: call fit() first")
        if check_inputs:
            check_probabilities(probs, name="probs")
        x = probs.detach().to(torch.float32)
        if x.shape[0] == 0:
            return DefenseResult(x.clone(), x.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=x.device))
        out = self._defend(x, generator)
        defended, extras = out if isinstance(out, tuple) else (out, {})
        return DefenseResult(defended, (defended - x).abs().sum(1), defended.argmax(1) != x.argmax(1), extras)

    def __call__(self, probs: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """The defended vectors only."""
        return self.defend(probs, generator=generator).defended

    def _defend(self, probs: Tensor, generator: Optional[torch.Generator]):
        raise NotImplementedError

    @property
    def uniforms_per_answer(self) -> Optional[int]:
        """How many U(0, 1) draws one answer of this randomized defense takes when they are given
        (`defend_drawn`); None: its randomness cannot be given."""
        return None

    def defend_drawn(self, probs: Tensor, uniforms: Tensor) -> Tensor:
        """The defended vectors [B, C] with the randomness given: ``uniforms`` [B, `uniforms_per_answer`]
        in [0, 1), row i for answer i, mapped as a ``keyed`` defense maps its hash. Fresh uniforms per
        answer are the defense as published; uniforms from a keyed hash of the query answer a repeated
        query alike. This is what an exported graph computes (its second input); it checks its inputs
        only in eager mode."""
        count = self.uniforms_per_answer
        if count is None:
            raise InputError(f"{self.name}: its randomness cannot be given as uniforms")
        if not self.fitted:
            raise RuntimeError(f"{self!r} is not fitted: call fit() first")
        if not torch.compiler.is_exporting():
            check_probabilities(probs, name="probs")
            if uniforms.shape != (probs.shape[0], count) or not bool(((uniforms >= 0) & (uniforms <= 1)).all()):
                raise ValueError(f"{self.name}: uniforms must be [B={probs.shape[0]}, {count}] in [0, 1], got "
                                 f"{tuple(uniforms.shape)}")
        return self._defend_drawn(probs.detach().to(torch.float32), uniforms.to(probs.device, torch.float32))

    def _defend_drawn(self, probs: Tensor, uniforms: Tensor) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What ``fit`` learned, as tensors and plain values (saved with weights_only checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        self._fitted = True

    def save(self, path, meta: Optional[dict] = None) -> None:
        """Write name, hyperparameters and fitted state to a weights-only checkpoint, atomically."""
        if not self.fitted:
            raise RuntimeError(f"{self!r} is not fitted: nothing to save")
        state = self.state_dict()
        if self.is_keyed:
            state["query_key"] = torch.tensor(list(self.query_key), dtype=torch.uint8)
        save_payload(path, "output-defense", {"name": self.name, "params": self.params()}, meta or {}, state)


def load_defense(path) -> OutputDefense:
    """An output defense saved with ``save`` (never unpickles arbitrary objects)."""
    payload = load_payload(path, "output-defense")
    try:
        arch = payload["architecture"]
        defense = create_defense(arch["name"], **arch["params"])
        defense.load_state_dict(payload["state_dict"])
        if defense.is_keyed:
            defense.query_key = check_key(payload["state_dict"]["query_key"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {Path(path)}: not a usable defense ({' '.join(str(err).split())})") from None
    return defense


class TrainingDefense(Defense):
    """A defense that changes how the target is trained (dropout, L2, adversarial regularization,
    DP-SGD, ...). ``architecture(kwargs)`` adapts the target's architecture (dropout adds layers; the
    others leave it), and ``train(model, x, y, ...)`` trains ``model`` in place and returns its history
    (with ``epsilon`` for DP-SGD). ``uses`` says what else a defense needs: "reference", records from
    the same distribution that are not in the training set (adversarial regularization's non-members,
    early stopping's held-out split); "engine", where its independent work units run (`mia_fast.distributed`:
    input perturbation's simulator models). The pipeline trains one target per training defense, and the aware
    attacker trains its shadow models with the same defense and hyperparameters."""

    kind = "training"
    uses: ClassVar[frozenset] = frozenset()

    def architecture(self, kwargs: dict) -> dict:
        """The target architecture's keyword arguments under this defense."""
        return dict(kwargs)

    def train(self, model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float, seed: int,
              device: str = "cpu", progress: bool = False, reference: Optional[tuple] = None, engine=None) -> dict:
        """Train ``model`` in place on (x, y); ``reference`` = (x_ref, y_ref) and ``engine`` (default: this
        process) for defenses that use them."""
        if "reference" in self.uses and (reference is None or len(reference[1]) == 0):
            raise InputError(f"{self.name}: needs reference records outside the training set (the run leaves "
                             "none: use fewer --members / --nonmembers)")
        extra = {"engine": engine} if "engine" in self.uses else {}
        return self._train(model, torch.as_tensor(x).float(), torch.as_tensor(y).long(), epochs=epochs, lr=lr,
                           seed=seed, device=device, progress=progress, reference=reference, **extra)

    def _train(self, model, x, y, *, epochs, lr, seed, device, progress, reference) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not implement _train()")


# ----------------------------------------------------------------------------------------------- registry
DEFENSES: Dict[str, Type[Defense]] = {}


def register_in(registry: dict, cls: type, what: str) -> type:
    """Add ``cls`` to ``registry`` under its ``name`` (ValueError if the name is empty or taken)."""
    if not cls.name or cls.name in registry:
        raise ValueError(f"{what} name {cls.name!r} is empty or taken")
    registry[cls.name] = cls
    return cls


def register_defense(cls: Type[Defense]) -> Type[Defense]:
    """Class decorator: make ``cls`` creatable by its ``name``."""
    return register_in(DEFENSES, cls, "defense")


def defense_names(kind: Optional[str] = None) -> list:
    """Registered names, of one ``kind`` ("output", "training") or all."""
    return [name for name, cls in DEFENSES.items() if kind is None or cls.kind == kind]


def _defense_class(name: str) -> Type[Defense]:
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    return DEFENSES[name]


def hyperparameters(cls: type) -> Dict[str, inspect.Parameter]:
    """The keyword-only constructor parameters of a defense (or generator) class, in order."""
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}


def create_defense(name: str, **params) -> Defense:
    """A new, unfitted defense ``name`` with hyperparameters ``params`` (one-line ValueError otherwise).

    >>> create_defense("topk", k=2)
    TopK(k=2, renormalize=True)
    >>> create_defense("topk", kk=2)
    Traceback (most recent call last):
    ...
    ValueError: topk: unknown hyperparameter 'kk'; it takes: k, renormalize
    """
    cls = _defense_class(name)
    known = hyperparameters(cls)
    for key in params:
        if key not in known:
            raise ValueError(f"{name}: unknown hyperparameter {key!r}; it takes: {', '.join(known) or 'none'}")
    return cls(**params)


def param_type(cls: type, key: str):
    """The type a hyperparameter ``key`` of ``cls`` is parsed as (its annotation, Optional removed)."""
    hint = typing.get_type_hints(cls.__init__).get(key, str)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def parse_param(name: str, key: str, text: str):
    """The value of hyperparameter ``key`` of defense ``name`` from text (as `--param key=value` gives it)."""
    cls = _defense_class(name)
    if key not in hyperparameters(cls):
        raise ValueError(f"{name}: unknown hyperparameter {key!r}; it takes: {', '.join(hyperparameters(cls)) or 'none'}")
    kind = param_type(cls, key)
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name}.{key}: expected true or false, got {text!r}")
        return text.lower() in ("true", "1", "yes")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}.{key}: expected {kind.__name__}, got {text!r}") from None


def describe_defenses() -> list:
    """(name, kind, description, {hyperparameter: default}) for every registered defense."""
    rows = []
    for name, cls in DEFENSES.items():
        doc = cls.description
        defaults = {k: (None if p.default is p.empty else p.default) for k, p in hyperparameters(cls).items()}
        rows.append((name, cls.kind, doc, defaults))
    return rows


def check_positive(name: str, **values) -> None:
    """ValueError naming the first hyperparameter that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: {key} must be > 0, got {value!r}")
