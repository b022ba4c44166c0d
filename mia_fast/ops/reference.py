"""Plain-PyTorch references that define the ops. The fused kernels are tested against these.

`aeppt_loop` is Algorithm 1 of Xue et al. (AEPPT, sec. 4.4) written with autograd for any logit
function; `aeppt_reference` applies it to the label-folded substitute MIM with the op's signature.
`place_in_rank_order_reference` defines the op behind the rank-preserving output defenses (HAMP's
output step, the rank template).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def folded_logit(probs: Tensor, labels: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor,
                 class_table: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """Logit z of the substitute MIM with its label branch folded into ``class_table`` (aeppt-math.md)."""
    h1 = torch.relu(probs @ w_pred.T + b_pred)
    h2 = torch.relu(h1 @ w_hidden.T + class_table[labels])
    return h2 @ w_out + b_out


def folded_loss_gradient(probs: Tensor, labels: Tensor, target: Tensor, w_pred: Tensor, b_pred: Tensor,
                         w_hidden: Tensor, class_table: Tensor, w_out: Tensor, b_out: Tensor) -> Tuple[Tensor, Tensor]:
    """(z, grad_p BCE(z, target)) of the folded substitute MIM in closed form: autograd's backward pass
    written out, product by product in its order, so a graph without autograd (`torch.export`) computes
    the same gradient."""
    h1 = torch.relu(probs @ w_pred.T + b_pred)
    h2 = torch.relu(h1 @ w_hidden.T + class_table[labels])
    z = h2 @ w_out + b_out
    grad_z = torch.sigmoid(z) - target
    grad_h2 = torch.where(h2 > 0, grad_z[:, None] * w_out[None, :], 0.0)
    grad_h1 = torch.where(h1 > 0, grad_h2 @ w_hidden, 0.0)
    return z, grad_h1 @ w_pred


def aeppt_loop(probs: Tensor, logit_fn: Callable[[Tensor, Tensor], Tensor], steps: Tensor, *,
               preserve_label: bool = False, stop_when_flipped: bool = False,
               renormalize: bool = False,
               on_step: Optional[Callable[[int, Tensor], None]] = None,
               loss_gradient: Optional[Callable[[Tensor, Tensor, Tensor], Tuple[Tensor, Tensor]]] = None
               ) -> Tuple[Tensor, Tensor, Tensor]:
    """Algorithm 1 of AEPPT with autograd, as a user would write it.

    y^ = one-hot(argmax f(x)); Y = 1[I'(f(x), y^) >= 0.5]; for t < T:
    f_adv <- clip(f_adv + steps[t] * sign(grad_f BCE(I'(f_adv, y^), Y)), 0, 1).

    ``logit_fn(p, labels)`` returns the substitute MIM's logit z (I' = sigmoid(z)); ``steps`` [T, B] holds
    eps * U(0, 1) per iteration and sample. Options beyond the paper (all off by default):
    ``preserve_label`` rejects a sample's step when it would change its argmax; ``stop_when_flipped``
    freezes a sample from the first iteration at which 1[I' >= 0.5] != Y; ``renormalize`` divides the
    final vector by its sum (uniform if the sum is 0). ``on_step(t, f_adv)``, if given, sees the state
    before iteration t and once more (t = T) at the end, before renormalizing. ``loss_gradient(p, labels,
    Y)``, if given, returns (z, grad_p BCE) in closed form instead of autograd.
    Returns (f_adv, I'(f(x)), I'(f_adv)).
    """
    labels = probs.argmax(1)
    with torch.no_grad():
        score_in = torch.sigmoid(logit_fn(probs, labels))
    target = (score_in >= 0.5).to(probs.dtype)
    adv = probs.detach().clone()
    active = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)
    for t in range(steps.shape[0]):
        if on_step is not None:
            on_step(t, adv)
        if loss_gradient is not None:
            z, grad = loss_gradient(adv, labels, target)
        else:
            x = adv.detach().requires_grad_(True)
            z = logit_fn(x, labels)
            (grad,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(z, target, reduction="sum"), x)
        if stop_when_flipped:
            active = active & ((torch.sigmoid(z.detach()) >= 0.5) == target.bool())
        step = steps[t][:, None] * grad.sign()
        if stop_when_flipped:
            step = torch.where(active[:, None], step, torch.zeros_like(step))
        new = (adv + step).clamp(0.0, 1.0)
        if preserve_label:
            new = torch.where((new.argmax(1) == labels)[:, None], new, adv)
        adv = new.detach()
    if on_step is not None:
        on_step(steps.shape[0], adv)
    if renormalize:
        total = adv.sum(1, keepdim=True)
        adv = torch.where(total > 0, adv / total.clamp_min(torch.finfo(adv.dtype).tiny),
                          torch.full_like(adv, 1.0 / adv.shape[1]))
    with torch.no_grad():
        score_out = torch.sigmoid(logit_fn(adv, labels))
    return adv, score_in, score_out


def aeppt_reference(probs: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor,
                    w_out: Tensor, b_out: Tensor, steps: Tensor, preserve_label: bool = False,
                    stop_when_flipped: bool = False, renormalize: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference of ``mia_fast::aeppt`` (same arguments): `aeppt_loop` on the folded substitute MIM."""

    def logit(p: Tensor, labels: Tensor) -> Tensor:
        return folded_logit(p, labels, w_pred, b_pred, w_hidden, class_table, w_out, b_out)

    return aeppt_loop(probs, logit, steps, preserve_label=preserve_label,
                      stop_when_flipped=stop_when_flipped, renormalize=renormalize)


def aeppt_closed_form(probs: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor,
                      w_out: Tensor, b_out: Tensor, steps: Tensor, preserve_label: bool = False,
                      stop_when_flipped: bool = False, renormalize: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """`aeppt_reference` with the gradient in closed form (`folded_loss_gradient`): aten ops only, no
    autograd, so it traces into an exported graph (the T iterations unrolled)."""
    weights = (w_pred, b_pred, w_hidden, class_table, w_out, b_out)

    def logit(p: Tensor, labels: Tensor) -> Tensor:
        return folded_logit(p, labels, *weights)

    return aeppt_loop(probs, logit, steps, preserve_label=preserve_label, stop_when_flipped=stop_when_flipped,
                      renormalize=renormalize,
                      loss_gradient=lambda p, labels, target: folded_loss_gradient(p, labels, target, *weights))


def aeppt_event_counts(probs: Tensor, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor,
                       w_out: Tensor, b_out: Tensor, steps: Tensor, preserve_label: bool = False,
                       stop_when_flipped: bool = False, renormalize: bool = False) -> Tensor:
    """What the event-driven op counts, from the plain math: per sample [B, 2] int32, the iterations
    whose step changed a ReLU mask (1[a1 > 0] or 1[a2 > 0]) of the folded substitute, and those whose
    step brought a component to a bound of [0, 1] (it moved, and now equals 0 or 1). ``renormalize``
    acts after the loop and changes no count."""
    labels = probs.argmax(1)

    def masks(p: Tensor) -> Tensor:
        a1 = p @ w_pred.T + b_pred
        a2 = torch.relu(a1) @ w_hidden.T + class_table[labels]
        return torch.cat([a1 > 0, a2 > 0], 1)

    def logit(p: Tensor, lab: Tensor) -> Tensor:
        return folded_logit(p, lab, w_pred, b_pred, w_hidden, class_table, w_out, b_out)

    counts = torch.zeros(probs.shape[0], 2, dtype=torch.int32)
    previous = []

    def on_step(t: int, adv: Tensor) -> None:
        with torch.no_grad():
            current = (adv.clone(), masks(adv))
        if previous:
            before, before_masks = previous.pop()
            counts[:, 0] += (current[1] != before_masks).any(1).cpu().int()
            reached = (adv != before) & ((adv == 0) | (adv == 1))
            counts[:, 1] += reached.any(1).cpu().int()
        previous.append(current)

    aeppt_loop(probs, logit, steps, preserve_label=preserve_label, stop_when_flipped=stop_when_flipped,
               on_step=on_step)
    return counts.to(probs.device)


def select_within_distance_reference(originals: Tensor, candidates: Tensor, losses: Tensor, eps: float,
                                     valid: Optional[Tensor] = None, squared: bool = False) -> Tuple[Tensor, Tensor]:
    """Reference of ``mia_fast::select_within_distance`` (Bai et al., Algorithm 1, per sample).

    Candidate k of original n qualifies when valid[n, k], its loss is not NaN and its distance is within
    eps (L2, or squared L2 with ``squared=True``; compared as squared values against eps^2 in float32).
    Returns the index of the lowest-loss qualifying candidate (ties -> lowest index, -1 when none) and
    all distances [N, K] (L2 or squared L2, by mode).
    """
    d2 = ((candidates - originals[:, None, :]) ** 2).sum(-1)
    threshold = eps if squared else eps * eps
    qualifies = (d2 <= threshold) & ~torch.isnan(losses)
    if valid is not None:
        qualifies = qualifies & valid
    key = torch.where(qualifies, losses, torch.full_like(losses, float("inf")))
    best = key.min(1, keepdim=True).values
    hit = qualifies & (key == best)
    index = torch.where(hit.any(1), hit.to(torch.int8).argmax(1), torch.full_like(best[:, 0], -1, dtype=torch.long))
    return index, d2 if squared else d2.sqrt()


def place_in_rank_order_reference(probs: Tensor, values: Tensor) -> Tensor:
    """Reference of ``mia_fast::place_in_rank_order``: each row of ``values`` [B, C] (sorted largest first)
    placed in the rank order of the same row of ``probs`` [B, C]: out[b, j] = values[b, rank of probs[b, j]],
    ranks from the largest (0), ties in index order (a stable descending sort), so the argmax and the
    ranking of ``probs`` are kept wherever ``values`` is strictly decreasing."""
    order = probs.argsort(dim=1, descending=True, stable=True)
    return torch.empty_like(values).scatter(1, order, values)
