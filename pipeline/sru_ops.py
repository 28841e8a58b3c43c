"""The SRU's element-wise recurrence (eqs. 3-6) as one torch custom op, ``torch.ops.mrrn.sru_recurrence``.

Models call the same op on every device. On CUDA it is two Triton kernels per layer, one forward and
one backward (``sru_triton.py``), each looping over time inside the kernel. Elsewhere (CPU) everything
that does not depend on the cell state is computed for all time steps at once (the gates, the input
term, the output), which leaves one fused multiply-add per time step forward and one backward.

Shapes: u (T, B, 3H) the projections [x~ | f_pre | r_pre]; bias (2H,) [b_f | b_r]; skip (T, B, H) the
term added in eq. 6 (x_t, or its projection); c0 (B, H). The op returns h (T, B, H) and every cell
state c (T, B, H) (the backward pass needs them; the last one is the layer's final state). The
backward pass is a second hand-written loop, never an autograd graph of T nodes.
"""
from __future__ import annotations

import torch

_LIB = "mrrn"


def _check(u: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor, c0: torch.Tensor) -> int:
    T, B, three_h = u.shape
    H = three_h // 3
    if three_h != 3 * H or bias.shape != (2 * H,) or skip.shape != (T, B, H) or c0.shape != (B, H):
        raise ValueError(f"sru_recurrence expects u (T, B, 3H), bias (2H,), skip (T, B, H), c0 (B, H); got "
                         f"{tuple(u.shape)}, {tuple(bias.shape)}, {tuple(skip.shape)}, {tuple(c0.shape)}")
    return H


def _gates(u: torch.Tensor, bias: torch.Tensor, H: int):
    """x~ (T, B, H) and the gates f, r (T, B, H) of every time step at once."""
    x_tilde, f_pre, r_pre = u.split(H, dim=-1)
    return x_tilde, torch.sigmoid(f_pre + bias[:H]), torch.sigmoid(r_pre + bias[H:])


@torch.library.custom_op(f"{_LIB}::sru_recurrence", mutates_args=())
def sru_recurrence(u: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = r_t * tanh(c_t) + (1 - r_t) * skip_t with c_t = f_t * c_{t-1} + (1 - f_t) * x~_t (CPU and any
    device without a kernel of its own)."""
    H = _check(u, bias, skip, c0)
    x_tilde, f, r = _gates(u, bias, H)
    c = torch.mul(1 - f, x_tilde)  # (T, B, H): (1 - f_t) x~_t, then f_t c_{t-1} added step by step
    prev = c0
    for t in range(u.shape[0]):
        c[t].addcmul_(f[t], prev)  # (5)
        prev = c[t]
    h = torch.addcmul(skip, r, torch.tanh(c) - skip)  # (6): r tanh(c) + (1 - r) skip
    return h, c


@sru_recurrence.register_fake
def _(u, bias, skip, c0):
    # the CUDA kernels compute and store in float32 whatever the projections' dtype
    dtype = torch.float32 if u.device.type == "cuda" else torch.promote_types(u.dtype, skip.dtype)
    return skip.new_empty(skip.shape, dtype=dtype), skip.new_empty(skip.shape, dtype=dtype)


@torch.library.custom_op(f"{_LIB}::sru_recurrence_backward", mutates_args=())
def sru_recurrence_backward(grad_h: torch.Tensor, grad_c: torch.Tensor, u: torch.Tensor, bias: torch.Tensor,
                            skip: torch.Tensor, c0: torch.Tensor, c: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of u, bias, skip and c0 given those of h and of every state c (T, B, H)."""
    H = c0.shape[-1]
    x_tilde, f, r = _gates(u, bias, H)
    tanh_c = torch.tanh(c)
    grad_u = torch.empty_like(u)
    d_x_tilde, d_f_pre, d_r_pre = grad_u.split(H, dim=-1)
    torch.mul(grad_h * (tanh_c - skip), r * (1 - r), out=d_r_pre)  # through r
    grad_skip = grad_h * (1 - r)  # through the skip term
    dc = torch.addcmul(grad_c, grad_h * r, 1 - tanh_c * tanh_c)  # dL/dc_t from h_t (and c_t itself)
    for t in range(u.shape[0] - 2, -1, -1):
        dc[t].addcmul_(f[t + 1], dc[t + 1])  # ... and from c_{t+1} = f_{t+1} c_t + ...
    prev = torch.cat([c0[None], c[:-1]])  # (T, B, H): c_{t-1}
    torch.mul(dc * (prev - x_tilde), f * (1 - f), out=d_f_pre)  # through f
    torch.mul(dc, 1 - f, out=d_x_tilde)
    return grad_u, grad_u[..., H:].sum(dim=(0, 1)), grad_skip, dc[0] * f[0]


@sru_recurrence_backward.register_fake
def _(grad_h, grad_c, u, bias, skip, c0, c):
    return torch.empty_like(u), torch.empty_like(bias), torch.empty_like(skip), torch.empty_like(c0)


def _setup_context(ctx, inputs, output):
    u, bias, skip, c0 = inputs
    ctx.save_for_backward(u, bias, skip, c0, output[1])


def _backward(ctx, grad_h, grad_c):
    u, bias, skip, c0, c = ctx.saved_tensors
    grad_h = torch.zeros_like(c) if grad_h is None else grad_h.contiguous()
    grad_c = torch.zeros_like(c) if grad_c is None else grad_c.contiguous()
    return torch.ops.mrrn.sru_recurrence_backward(grad_h, grad_c, u, bias, skip, c0, c)


sru_recurrence.register_autograd(_backward, setup_context=_setup_context)


@sru_recurrence.register_kernel("cuda")
def _(u, bias, skip, c0):
    from pipeline.sru_triton import forward

    _check(u, bias, skip, c0)
    return forward(u, bias, skip, c0)


@sru_recurrence_backward.register_kernel("cuda")
def _(grad_h, grad_c, u, bias, skip, c0, c):
    from pipeline.sru_triton import backward

    return backward(grad_h, grad_c, u, bias, skip, c0, c)
