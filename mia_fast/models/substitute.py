"""The defender's substitute membership-inference model I' (Xue et al., AEPPT, sec. 4.3, Fig. 3).

Three fully connected sub-networks, after Nasr et al.: a prediction network [C -> 256] on the target's
confidence vector, a label network [C -> 256] on the one-hot label, and a connection network
[512 -> 64 -> 1] on their concatenation; ReLU activations and a sigmoid output.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

Tensor = torch.Tensor


class SubstituteMIM(nn.Module):
    """I'(p, y) = sigmoid(connection([relu(W_p p + b_p), relu(W_l y + b_l)])).

    Args:
        num_classes: C, the length of the target model's confidence vectors.
        hidden: width of the prediction and label networks (256 in the paper).
        connection_hidden: hidden width of the connection network (64 in the paper).

    >>> mim = SubstituteMIM(10)
    >>> p = torch.softmax(torch.randn(4, 10), 1)
    >>> mim(p, p.argmax(1)).shape
    torch.Size([4])
    """

    def __init__(self, num_classes: int, *, hidden: int = 256, connection_hidden: int = 64):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.prediction = nn.Linear(num_classes, hidden)
        self.label = nn.Linear(num_classes, hidden)
        self.connection_hidden = nn.Linear(2 * hidden, connection_hidden)
        self.connection_out = nn.Linear(connection_hidden, 1)

    def architecture(self) -> dict:
        return {"num_classes": self.num_classes, "hidden": self.prediction.out_features,
                "connection_hidden": self.connection_hidden.out_features}

    def logit(self, probs: Tensor, labels: Tensor) -> Tensor:
        """The logit z of I' for confidence vectors [B, C] and integer labels [B]."""
        onehot = nn.functional.one_hot(labels, self.num_classes).to(probs.dtype)
        h = torch.cat([torch.relu(self.prediction(probs)), torch.relu(self.label(onehot))], dim=1)
        return self.connection_out(torch.relu(self.connection_hidden(h))).squeeze(1)

    def forward(self, probs: Tensor, labels: Tensor) -> Tensor:
        """Membership probability I'(probs, one-hot(labels)) in [0, 1], shape [B]."""
        return torch.sigmoid(self.logit(probs, labels))

    @torch.no_grad()
    def fold(self) -> "FoldedMIM":
        """The label-folded form the fused kernels compute (design/aeppt-math.md).

        The label branch and its half of the connection layer depend only on the class k, so
        c[k] = W_b relu(W_l[:, k] + b_l) + b_c1 is precomputed once: a2 = W_a h1 + c[k].
        """
        hidden = self.prediction.out_features
        w_c1 = self.connection_hidden.weight
        label_hidden = torch.relu(self.label.weight.T + self.label.bias)  # [C, hidden]
        table = label_hidden @ w_c1[:, hidden:].T + self.connection_hidden.bias
        return FoldedMIM(self.prediction.weight, self.prediction.bias, w_c1[:, :hidden], table,
                         self.connection_out.weight[0], self.connection_out.bias)


class FoldedMIM(nn.Module):
    """Substitute MIM with its label branch folded into a class table; holds the fused op's weights
    as float32 contiguous buffers (so ``.to(device)`` moves them)."""

    def __init__(self, w_pred: Tensor, b_pred: Tensor, w_hidden: Tensor, class_table: Tensor, w_out: Tensor,
                 b_out: Tensor):
        super().__init__()
        for name, value in [("w_pred", w_pred), ("b_pred", b_pred), ("w_hidden", w_hidden),
                            ("class_table", class_table), ("w_out", w_out), ("b_out", b_out)]:
            self.register_buffer(name, value.detach().to(torch.float32).contiguous().clone())

    @property
    def num_classes(self) -> int:
        return self.w_pred.shape[1]

    def weights(self) -> Tuple[Tensor, ...]:
        return (self.w_pred, self.b_pred, self.w_hidden, self.class_table, self.w_out, self.b_out)

    def logit(self, probs: Tensor, labels: Tensor) -> Tensor:
        from ..ops.reference import folded_logit

        return folded_logit(probs, labels, *self.weights())

    def forward(self, probs: Tensor, labels: Tensor) -> Tensor:
        return torch.sigmoid(self.logit(probs, labels))
