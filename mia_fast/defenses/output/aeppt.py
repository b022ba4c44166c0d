"""AEPPT: adversarial-example based output perturbation (Xue et al., sec. 4.4, Algorithm 1, eq. 1-3).

Each confidence vector f(x) becomes an adversarial prediction that pushes the defender's substitute
MIM I' across its decision boundary: y^ = one-hot(argmax f(x)), Y = 1[I'(f(x), y^) >= 0.5], and for
t < T:  f_adv <- clip(f_adv + U(0,1) * eps * sign(grad_f BCE(I'(f_adv, y^), Y)), 0, 1),
with one uniform number per sample per iteration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from ... import ops
from ...models.substitute import FoldedMIM, SubstituteMIM
from ...validation import check_probabilities
from ..base import OutputDefense, register_defense
from ..keyed import check_key, keyed_uniform

Tensor = torch.Tensor

#: Step sizes eps the paper settles on (sec. 5.4, Tables 3-4), with T = 100 iterations.
PAPER_EPS = {"cifar100": 9e-4, "purchase100": 2e-5}


@dataclass
class AEPPTResult:
    """Adversarial predictions and what the defense did to them.

    Attributes:
        adversarial: the defended confidence vectors [B, C].
        score_before: I'(f(x), y^) on the original vectors [B].
        score_after: I'(f_adv, y^) on the defended vectors [B].
        l1: ||f_adv - f(x)||_1 per sample [B].
        label_changed: argmax f_adv != argmax f(x) per sample [B].
        decision_flipped: 1[I'(f_adv) >= 0.5] != 1[I'(f(x)) >= 0.5] per sample [B].
    """

    adversarial: Tensor
    score_before: Tensor
    score_after: Tensor
    l1: Tensor
    label_changed: Tensor
    decision_flipped: Tensor

    def summary(self) -> dict:
        """Mean and max L1 distance, label flips, and the fraction of I' decisions flipped."""
        n = self.l1.numel()
        return {
            "n": n,
            "mean_l1": float(self.l1.mean()) if n else 0.0,
            "max_l1": float(self.l1.max()) if n else 0.0,
            "label_flips": int(self.label_changed.sum()),
            "decision_flip_rate": float(self.decision_flipped.float().mean()) if n else 0.0,
        }


def _folded(mim: Union[SubstituteMIM, FoldedMIM], device: torch.device) -> FoldedMIM:
    folded = mim.fold() if isinstance(mim, SubstituteMIM) else mim
    if not isinstance(folded, FoldedMIM):
        raise TypeError(f"mim must be a SubstituteMIM or FoldedMIM, got {type(mim).__name__}")
    return folded.to(device)


def draw_steps(iters: int, batch: int, eps: float, *, generator: Optional[torch.Generator] = None,
               device: torch.device | str = "cpu") -> Tensor:
    """eps * U(0, 1) of shape [iters, batch]: the random step sizes eps' of Algorithm 1, line 11.

    Drawn on the generator's device (or ``device`` without one) and moved to ``device``, so a CPU
    generator gives the same steps, and so the same results, on every device.
    """
    where = generator.device if generator is not None else torch.device(device)
    u = torch.rand(iters, batch, generator=generator, device=where)
    return (u * eps).to(device)


def aeppt(probs: Tensor, mim: Union[SubstituteMIM, FoldedMIM], eps: float, iters: int = 100, *,
          generator: Optional[torch.Generator] = None, preserve_label: bool = False,
          stop_when_flipped: bool = False, renormalize: bool = False, chunk_size: int = 65536,
          check_inputs: bool = True, allow_unnormalized: bool = False, precision: str = "fp32",
          algorithm: Optional[str] = None, query_key: Optional[bytes] = None) -> AEPPTResult:
    """Defend confidence vectors with AEPPT (Xue et al., Algorithm 1).

    Args:
        probs: the target model's confidence vectors f(x), float [B, C] on CPU or CUDA.
        mim: the substitute membership-inference model I' (trained with `train_substitute`).
        eps: step size; the paper uses 9e-4 for CIFAR-100 and 2e-5 for Purchase-100 (`PAPER_EPS`).
        iters: T, the number of iterations (100 in the paper).
        generator: a torch.Generator for the random steps; same seed, same output on any device.
        preserve_label: reject a step that would change the argmax (accuracy can never change).
        stop_when_flipped: stop a sample once I' has crossed 0.5 (smaller perturbations).
        renormalize: divide each defended vector by its sum, so it is a distribution again.
        chunk_size: samples per kernel call (memory stays bounded for any B); the steps are drawn per
            chunk, so a seed reproduces results for the same chunk size.
        check_inputs: validate ``probs`` (finite, in [0, 1], rows sum to 1); costs a host sync on CUDA.
        allow_unnormalized: accept rows that do not sum to 1.
        precision: "fp32", or "3xtf32" on CUDA (tensor cores, about fp32 accuracy; see `ops.aeppt`).
        algorithm: "events" (incremental forward passes with exact corrections) or "dense"; default
            `ops.default_algorithm` of the device (events on CPU). Same results up to float32 rounding.
        query_key: draw each vector's steps from a keyed hash of the vector itself
            (`mia_fast.defenses.keyed`) instead of ``generator``: the same query always gets the same answer.

    Returns:
        An `AEPPTResult` with the defended vectors and per-sample statistics.

    >>> torch.manual_seed(0) and None
    >>> mim = SubstituteMIM(10)
    >>> probs = torch.softmax(4 * torch.randn(8, 10), 1)
    >>> res = aeppt(probs, mim, eps=1e-3, iters=100, generator=torch.Generator().manual_seed(1))
    >>> res.adversarial.shape, bool((res.adversarial - probs).abs().max() <= 0.1 + 1e-6)
    (torch.Size([8, 10]), True)
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    folded = _folded(mim, probs.device)
    if check_inputs:
        check_probabilities(probs, num_classes=folded.num_classes, allow_unnormalized=allow_unnormalized,
                            name="probs")
    x = probs.detach().to(torch.float32).contiguous()
    outs = []
    for start in range(0, x.shape[0], chunk_size):
        part = x[start:start + chunk_size]
        steps = (keyed_uniform(part, query_key, iters) * eps if query_key is not None
                 else draw_steps(iters, part.shape[0], eps, generator=generator, device=x.device))
        outs.append(ops.aeppt(part, *folded.weights(), steps, preserve_label, stop_when_flipped, renormalize,
                              precision=precision, algorithm=algorithm))
    adv, before, after = (torch.cat(t) for t in zip(*outs)) if outs else (x.clone(), x[:, 0], x[:, 0])
    return AEPPTResult(
        adversarial=adv, score_before=before, score_after=after, l1=(adv - x).abs().sum(1),
        label_changed=adv.argmax(1) != x.argmax(1), decision_flipped=(after >= 0.5) != (before >= 0.5))


class AEPPTDefense(nn.Module):
    """Post-processing layer that turns confidence vectors into AEPPT adversarial predictions.

    Drop it behind a target model: ``nn.Sequential(target, nn.Softmax(1), AEPPTDefense(mim, eps=9e-4))``.
    The substitute MIM is folded once at construction; ``.to(device)`` moves it.

    Args:
        mim: the substitute membership-inference model I'.
        eps, iters, preserve_label, stop_when_flipped, renormalize, precision, algorithm: as in `aeppt`.
        generator: optional torch.Generator for reproducible steps; without one, steps are drawn
            from the global generator on the input's device (this also works under torch.compile).
        check_inputs: validate inputs in eager mode (skipped while compiling).

    >>> mim = SubstituteMIM(10)
    >>> defense = AEPPTDefense(mim, eps=1e-3)
    >>> defense(torch.softmax(torch.randn(3, 10), 1)).shape
    torch.Size([3, 10])
    """

    def __init__(self, mim: Union[SubstituteMIM, FoldedMIM], *, eps: float, iters: int = 100,
                 preserve_label: bool = False, stop_when_flipped: bool = False, renormalize: bool = False,
                 generator: Optional[torch.Generator] = None, check_inputs: bool = True, precision: str = "fp32",
                 algorithm: Optional[str] = None):
        super().__init__()
        if eps < 0 or iters < 0:
            raise ValueError(f"eps and iters must be >= 0, got eps={eps}, iters={iters}")
        ops.check_precision(precision)
        if algorithm is not None:
            ops.check_algorithm(algorithm, precision)
        self.algorithm = algorithm
        self.folded = _folded(mim, torch.device("cpu"))
        self.eps, self.iters = float(eps), int(iters)
        self.preserve_label, self.stop_when_flipped, self.renormalize = preserve_label, stop_when_flipped, renormalize
        self.generator = generator
        self.check_inputs = check_inputs
        self.precision = precision

    def extra_repr(self) -> str:
        return (f"classes={self.folded.num_classes}, eps={self.eps}, iters={self.iters}, "
                f"preserve_label={self.preserve_label}, stop_when_flipped={self.stop_when_flipped}, "
                f"renormalize={self.renormalize}, precision={self.precision}, algorithm={self.algorithm}")

    def forward(self, probs: Tensor) -> Tensor:
        if self.check_inputs and not torch.compiler.is_compiling():
            check_probabilities(probs, num_classes=self.folded.num_classes, name="probs")
        x = probs.detach().to(torch.float32).contiguous()
        steps = draw_steps(self.iters, x.shape[0], self.eps, generator=self.generator, device=x.device)
        adv, _, _ = ops.aeppt(x, *self.folded.weights(), steps, self.preserve_label, self.stop_when_flipped,
                              self.renormalize, precision=self.precision, algorithm=self.algorithm)
        return adv.to(probs.dtype)


@register_defense
class AEPPT(OutputDefense):
    """AEPPT as a registered output defense (Xue et al., Algorithm 1): ``fit`` trains the substitute MIM
    I' on the defender's member and non-member outputs (`train_substitute`, ``mim_epochs``), ``defend``
    runs the fused op. Hyperparameters as in `aeppt`; ``eps`` has no default (the paper's are in
    `PAPER_EPS`; a run directory supplies its own). ``keyed``: the steps come from a keyed hash of
    each query (`mia_fast.defenses.keyed`; the key is made by ``fit``, or given to `from_substitute`).
    ``refits`` (beyond the paper, 0 by default): a defense-aware substitute. After the first I', each
    refit defends the defender's own outputs with the current I' and trains a fresh I' on the originals
    and every earlier round's defended outputs together, as an attacker that refits on defended outputs
    would; the last I' defends. It changes only the substitute, so the fused ops run it unchanged.

    >>> torch.manual_seed(0) and None
    >>> d = AEPPT.from_substitute(SubstituteMIM(10), eps=1e-3, iters=20)
    >>> res = d.defend(torch.softmax(torch.randn(4, 10), 1), generator=torch.Generator().manual_seed(0))
    >>> res.defended.shape, sorted(res.summary())
    (torch.Size([4, 10]), ['decision_flipped_rate', 'label_flips', 'max_l1', 'mean_l1', 'n'])
    """

    name = "aeppt"
    description = "adversarial output perturbation against a substitute MIM (Xue et al.)"
    randomized = True
    uses = frozenset({"outputs"})
    adaptive_attacks = ("flip", "adversarial_training")

    def __init__(self, *, eps: Optional[float] = None, iters: int = 100, mim_epochs: int = 100,
                 preserve_label: bool = False, stop_when_flipped: bool = False, renormalize: bool = False,
                 precision: str = "fp32", chunk_size: int = 65536, algorithm: Optional[str] = None,
                 keyed: bool = False, refits: int = 0):
        if eps is not None and not eps >= 0:
            raise ValueError(f"aeppt: eps must be >= 0, got {eps!r}")
        if iters < 0 or mim_epochs < 1 or chunk_size < 1 or refits < 0:
            raise ValueError(f"aeppt: need iters >= 0, mim_epochs >= 1, chunk_size >= 1, refits >= 0; got "
                             f"iters={iters}, mim_epochs={mim_epochs}, chunk_size={chunk_size}, refits={refits}")
        ops.check_precision(precision)
        if algorithm is not None:
            ops.check_algorithm(algorithm, precision)
        self.algorithm = algorithm
        self.eps, self.iters, self.mim_epochs = eps, int(iters), int(mim_epochs)
        self.preserve_label, self.stop_when_flipped = bool(preserve_label), bool(stop_when_flipped)
        self.renormalize, self.precision, self.chunk_size = bool(renormalize), precision, int(chunk_size)
        self.keyed, self.refits = bool(keyed), int(refits)
        self.substitute = None

    @classmethod
    def from_substitute(cls, mim: SubstituteMIM, *, query_key: Optional[bytes] = None, **params) -> "AEPPT":
        """AEPPT around an already trained substitute MIM (a run's substitute.safetensors, `train_substitute`);
        a keyed one needs its ``query_key`` (`mia_fast.defenses.keyed.new_key`)."""
        defense = cls(**params)
        if defense.keyed:
            defense.query_key = check_key(query_key)
        defense.substitute, defense._fitted = mim.eval(), True
        return defense

    @staticmethod
    def run_defaults(cfg) -> dict:
        """The hyperparameters a run directory's config implies (its eps, T, MIM epochs and batch)."""
        return {"eps": cfg.eps, "iters": cfg.iters, "mim_epochs": cfg.mim_epochs, "chunk_size": cfg.batch}

    def _fit(self, member_probs, member_labels, nonmember_probs, nonmember_labels, *, target, inputs, seed, device,
             progress):
        from ...seeding import stream, stream_seed
        from ...training.substitute import train_substitute

        seen = [(member_probs, member_labels, nonmember_probs, nonmember_labels)]
        for round_ in range(self.refits + 1):
            if round_:  # the current I' defends the defender's outputs; the next one learns from them too
                seen.append((self._defend_fitting(member_probs, stream(seed, "substitute-refit", 2 * round_)),
                             member_labels,
                             self._defend_fitting(nonmember_probs, stream(seed, "substitute-refit", 2 * round_ + 1)),
                             nonmember_labels))
            data = [torch.cat(part) for part in zip(*seen)]
            self.substitute, _ = train_substitute(
                *data, epochs=self.mim_epochs, batch_size=512 if len(data[0]) > 8192 else 128,
                seed=stream_seed(seed, "substitute", round_),
                device=device, progress=progress, desc=f"substitute MIM {round_ + 1}/{self.refits + 1}")

    def _defend_fitting(self, probs: Tensor, generator: torch.Generator) -> Tensor:
        """The current substitute's answers on the defender's own outputs while fitting (never keyed)."""
        return self._run(probs.float(), generator, None).adversarial

    @property
    def num_classes(self):
        return self.substitute.num_classes if self.substitute is not None else None

    def state_dict(self) -> dict:
        return {"architecture": self.substitute.architecture(), "weights": self.substitute.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        mim = SubstituteMIM(**state["architecture"])
        mim.load_state_dict(state["weights"])
        self.substitute, self._fitted = mim.eval(), True

    def _run(self, probs, generator, query_key) -> AEPPTResult:
        if self.eps is None:
            raise ValueError("aeppt: eps is not set (paper: 9e-4 CIFAR-100, 2e-5 Purchase-100)")
        return aeppt(probs.contiguous(), self.substitute, self.eps, self.iters, generator=generator,
                     preserve_label=self.preserve_label, stop_when_flipped=self.stop_when_flipped,
                     renormalize=self.renormalize, chunk_size=self.chunk_size, check_inputs=False,
                     precision=self.precision, algorithm=self.algorithm, query_key=query_key)

    def _defend(self, probs, generator):
        res = self._run(probs, generator, self.query_key if self.keyed else None)
        return res.adversarial, {"decision_flipped": res.decision_flipped}

    @property
    def uniforms_per_answer(self) -> int:
        return self.iters  # step t of answer i: eps * uniforms[i, t]

    def _defend_drawn(self, probs, uniforms):
        adv, _, _ = ops.aeppt(probs.contiguous(), *_folded(self.substitute, probs.device).weights(),
                              (uniforms * self.eps).T.contiguous(), self.preserve_label, self.stop_when_flipped,
                              self.renormalize, precision=self.precision, algorithm=self.algorithm)
        return adv
