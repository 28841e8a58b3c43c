"""The Simple Recurrent Unit of the MRRN paper (eqs. 2-6; Lei and Zhang, "Training RNNs as fast as CNNs").

    x~_t = W x_t                                    (2)
    f_t  = sigmoid(W_f x_t + b_f)                   (3)
    r_t  = sigmoid(W_r x_t + b_r)                   (4)
    c_t  = f_t * c_{t-1} + (1 - f_t) * x~_t         (5)
    h_t  = r_t * tanh(c_t) + (1 - r_t) * x_t        (6)

W, W_f and W_r (and, when input and hidden sizes differ, the skip projection W_s replacing x_t in
eq. 6) are one weight matrix: all time steps of all of them come from one matrix product. Only the
element-wise part (3)-(6) runs step by step, in :class:`SRUElementwise`, whose backward pass is a
second tight loop instead of an autograd graph of T nodes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SRUElementwise(torch.autograd.Function):
    """Eqs. 3-6 fused, one time step at a time on (B, H) slices that stay in cache.

    u: (T, B, 3H) the projections [x~ | f_pre | r_pre]; bias: (2H,) [b_f | b_r]; skip: (T, B, H) the
    term added in eq. 6 (x_t, or its projection); c0: (B, H). Returns h (T, B, H) and c_T (B, H).
    The backward pass is the mirror loop (gates recomputed from u), so no (T, B, H) temporaries are
    allocated beyond the outputs: that is what makes the SRU faster than an LSTM of the same size.
    """

    @staticmethod
    def forward(ctx, u, bias, skip, c0):
        T, H = u.shape[0], c0.shape[-1]
        b_f, b_r = bias[:H], bias[H:]
        h = torch.empty_like(skip)
        c = torch.empty_like(skip)
        prev = c0
        for t in range(T):
            x_tilde, f_pre, r_pre = u[t].split(H, dim=-1)
            f = torch.sigmoid(f_pre + b_f)  # (3)
            r = torch.sigmoid(r_pre + b_r)  # (4)
            torch.addcmul(x_tilde, f, prev - x_tilde, out=c[t])  # (5): f*c_prev + (1-f)*x~
            prev = c[t]
            s = skip[t]
            torch.addcmul(s, r, torch.tanh(prev) - s, out=h[t])  # (6): r*tanh(c) + (1-r)*s
        ctx.save_for_backward(u, bias, skip, c0, c)
        return h, c[T - 1].clone()

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        u, bias, skip, c0, c = ctx.saved_tensors
        T, H = u.shape[0], c0.shape[-1]
        b_f, b_r = bias[:H], bias[H:]
        grad_u = torch.empty_like(u)
        grad_skip = torch.empty_like(skip)
        carry = grad_c_last.clone() if grad_c_last is not None else torch.zeros_like(c0)  # dL/dc_t via c_{t+1}
        for t in range(T - 1, -1, -1):
            x_tilde, f_pre, r_pre = u[t].split(H, dim=-1)
            d_x_tilde, d_f_pre, d_r_pre = grad_u[t].split(H, dim=-1)
            f = torch.sigmoid(f_pre + b_f)
            r = torch.sigmoid(r_pre + b_r)
            prev = c[t - 1] if t > 0 else c0
            tanh_c = torch.tanh(c[t])
            s, dh = skip[t], grad_h[t]
            torch.mul(dh * (tanh_c - s), r * (1 - r), out=d_r_pre)  # through r
            torch.mul(dh, 1 - r, out=grad_skip[t])  # through the skip term
            dc = torch.addcmul(carry, dh * r, 1 - tanh_c * tanh_c)  # dL/dc_t
            torch.mul(dc * (prev - x_tilde), f * (1 - f), out=d_f_pre)  # through f
            torch.mul(dc, 1 - f, out=d_x_tilde)
            carry = dc * f
        grad_bias = grad_u[..., H:].sum(dim=(0, 1))
        return grad_u, grad_bias, grad_skip, carry


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
            gates, skip = (u[..., : 3 * H], u[..., 3 * H :]) if self.project_skip else (u, x)
        else:
            gates = F.linear(x, self.weight[: 3 * H])  # (T, B, 3H)
            skip = F.linear(skip_input, self.weight[3 * H :]) if self.project_skip else skip_input
        if c0 is None:
            c0 = x.new_zeros(x.shape[1], H)
        return SRUElementwise.apply(gates.contiguous(), self.bias, skip.contiguous(), c0)  # (3)-(6)


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
