"""The Simple Recurrent Unit of the MRRN paper (eqs. 2-6; Lei and Zhang, "Training RNNs as fast as CNNs").

    x~_t = W x_t                                    (2)
    f_t  = sigmoid(W_f x_t + b_f)                   (3)
    r_t  = sigmoid(W_r x_t + b_r)                   (4)
    c_t  = f_t * c_{t-1} + (1 - f_t) * x~_t         (5)
    h_t  = r_t * tanh(c_t) + (1 - r_t) * x_t        (6)

W, W_f and W_r (and, when input and hidden sizes differ, the skip projection W_s replacing x_t in
eq. 6) are one weight matrix: all time steps of all of them come from one matrix product. Only the
element-wise part (3)-(6) is sequential: it is one op, ``torch.ops.mrrn.sru_recurrence``
(``ops.py``): two Triton kernels per layer on CUDA, and on CPU one fused multiply-add per time
step with everything else computed for all steps at once; its backward pass is a second hand-written
loop instead of an autograd graph of T nodes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.sru import ops  # noqa: F401  (registers torch.ops.mrrn.sru_recurrence)


class SRULayer(nn.Module):
    """One SRU layer on time-major input: x (T, B, C) -> h (T, B, H), c_T (B, H)."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.project_skip = input_size != hidden_size
        blocks = 4 if self.project_skip else 3  # W, W_f, W_r (and W_s)
        self.weight = nn.Parameter(torch.empty(blocks * hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(2 * hidden_size))  # b_f, b_r
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal initialisation of each projection (Saxe et al., as in the paper); zero biases."""
        with torch.no_grad():
            for block in self.weight.split(self.hidden_size, dim=0):
                nn.init.orthogonal_(block)
            self.bias.zero_()

    def forward(self, x: torch.Tensor, c0: torch.Tensor | None = None,
                skip_input: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``skip_input`` (T, B, C), when given, is what the highway term carries instead of ``x``: the
        two-stream head feeds appearance + motion to the gates and keeps appearance alone on the skip path."""
        H = self.hidden_size
        if skip_input is None:
            u = F.linear(x, self.weight)  # (T, B, blocks*H): eq. 2 and every projection of every step at once
            # views, not copies: the op reads strided input, and split's backward is one concatenation
            gates, skip = u.split(3 * H, dim=-1) if self.project_skip else (u, x)
        else:
            gates = F.linear(x, self.weight[: 3 * H])  # (T, B, 3H)
            skip = F.linear(skip_input, self.weight[3 * H :]) if self.project_skip else skip_input
        if c0 is None:
            c0 = x.new_zeros(x.shape[1], H)
        h, c = torch.ops.mrrn.sru_recurrence(gates, self.bias, skip, c0)  # (3)-(6)
        return h, c[-1]  # (T, B, H), (B, H)


class SRU(nn.Module):
    """Stacked SRU layers, batch-first at the boundary: x (B, T, C) -> h (B, T, H) of the top layer.

    ``dropout`` applies between layers (the paper uses 0).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 3, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.dropout = input_size, hidden_size, dropout
        self.layers = nn.ModuleList(
            SRULayer(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"SRU expects (B, T, C) with C = {self.input_size}, got {tuple(x.shape)}")
        h = x.transpose(0, 1)  # (T, B, C): each step's rows are contiguous for the recurrence
        for i, layer in enumerate(self.layers):
            if i > 0 and self.dropout > 0:
                h = F.dropout(h, self.dropout, self.training)
            h, _ = layer(h)
        return h.transpose(0, 1)  # (B, T, H)
