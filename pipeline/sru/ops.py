"""The SRU's element-wise recurrence (eqs. 3-6) as one torch custom op, ``torch.ops.mrrn.sru_recurrence``.

Models call the same op on every device. On CUDA it is two Triton kernels per layer, one forward and
one backward (``kernels.py``), each looping over time inside the kernel. Elsewhere (CPU) everything
that does not depend on the cell state is computed for all time steps at once (the gates, the input
term, the output), which leaves one fused multiply-add per time step forward and one backward.

Shapes: u (T, B, 3H) the projections [x~ | f_pre | r_pre]; bias (2H,) [b_f | b_r]; skip (T, B, H) the
term added in eq. 6 (x_t, or its projection); c0 (B, H). The op returns h (T, B, H) and every cell
state c (T, B, H) (the backward pass needs them; the last one is the layer's final state). The
backward pass is a second hand-written loop, never an autograd graph of T nodes.
"""
from __future__ import annotations

import torch

aten = torch.ops.aten
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
    return x_tilde, torch.add(f_pre, bias[:H]).sigmoid_(), torch.add(r_pre, bias[H:]).sigmoid_()


@torch.library.custom_op(f"{_LIB}::sru_recurrence", mutates_args=())
def sru_recurrence(u: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h_t = r_t * tanh(c_t) + (1 - r_t) * skip_t with c_t = f_t * c_{t-1} + (1 - f_t) * x~_t (CPU and any
    device without a kernel of its own)."""
    H = _check(u, bias, skip, c0)
    x_tilde, f, r = _gates(u, bias, H)
    # few passes over (T, B, H) and few fresh buffers: on the CPU both cost as much as the arithmetic
    c = torch.addcmul(x_tilde, f, x_tilde, value=-1)  # (T, B, H): (1 - f_t) x~_t, then f_t c_{t-1} added
    prev = c0
    for t in range(u.shape[0]):
        c[t].addcmul_(f[t], prev)  # (5)
        prev = c[t]
    h = torch.addcmul(skip, r, torch.tanh(c).sub_(skip))  # (6): r tanh(c) + (1 - r) skip
    return h, c


@sru_recurrence.register_fake
def _(u, bias, skip, c0):
    # the CUDA kernels compute and store in float32 whatever the projections' dtype
    dtype = torch.float32 if u.device.type == "cuda" else torch.promote_types(u.dtype, skip.dtype)
    return skip.new_empty(skip.shape, dtype=dtype), skip.new_empty(skip.shape, dtype=dtype)


@torch.library.custom_op(f"{_LIB}::sru_recurrence_backward", mutates_args=())
def sru_recurrence_backward(grad_h: torch.Tensor, grad_c: torch.Tensor | None, u: torch.Tensor, bias: torch.Tensor,
                            skip: torch.Tensor, c0: torch.Tensor, c: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of u, bias, skip and c0 given those of h and of every state c (T, B, H; None: zero)."""
    H = c0.shape[-1]
    x_tilde, f, r = _gates(u, bias, H)
    grad_u = torch.empty_like(u)
    d_x_tilde, d_f_pre, d_r_pre = grad_u.split(H, dim=-1)
    tanh_c = torch.tanh(c)
    grad_skip = torch.addcmul(grad_h, grad_h, r, value=-1)  # through the skip term: dh (1 - r)
    torch.sub(tanh_c, skip, out=d_r_pre).mul_(grad_h)
    aten.sigmoid_backward.grad_input(d_r_pre, r, grad_input=d_r_pre)  # through r: ... r (1 - r)
    dc = torch.mul(grad_h, r)
    aten.tanh_backward.grad_input(dc, tanh_c, grad_input=dc)  # dL/dc_t from h_t: dh r (1 - tanh^2 c_t)
    if grad_c is not None:
        dc.add_(grad_c)  # ... and from c_t itself
    for t in range(u.shape[0] - 2, -1, -1):
        dc[t].addcmul_(f[t + 1], dc[t + 1])  # ... and from c_{t+1} = f_{t+1} c_t + ...
    torch.sub(c0, x_tilde[0], out=d_f_pre[0])  # c_{t-1} - x~_t
    torch.sub(c[:-1], x_tilde[1:], out=d_f_pre[1:])
    aten.sigmoid_backward.grad_input(d_f_pre.mul_(dc), f, grad_input=d_f_pre)  # through f
    torch.addcmul(dc, dc, f, value=-1, out=d_x_tilde)  # dc (1 - f)
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
    grad_c = None if grad_c is None else grad_c.contiguous()  # None: only h is used (the usual case)
    return torch.ops.mrrn.sru_recurrence_backward(grad_h, grad_c, u, bias, skip, c0, c)


sru_recurrence.register_autograd(_backward, setup_context=_setup_context)


@sru_recurrence.register_kernel("cuda")
def _(u, bias, skip, c0):
    from pipeline.sru.kernels import forward

    _check(u, bias, skip, c0)
    return forward(u, bias, skip, c0)


@sru_recurrence_backward.register_kernel("cuda")
def _(grad_h, grad_c, u, bias, skip, c0, c):
    from pipeline.sru.kernels import backward

    return backward(grad_h, grad_c, u, bias, skip, c0, c=c)
