"""The SRU recurrence as two Triton kernels: one forward and one backward launch per layer.

Each program owns ``BLOCK`` of the B*H (batch, unit) columns and walks the time steps inside the
kernel, keeping the cell state in registers: no launch per time step. Arithmetic is in float32 whatever
the input dtype (bf16 projections under autocast); states are stored in float32. Tested on the CPU
with Triton's interpreter (``TRITON_INTERPRET=1``) against the float64 step-by-step reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _forward_kernel(U, su_t, su_b, BIAS, SKIP, ss_t, ss_b, C0, H_OUT, C_OUT, T, BH, H, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) columns of the (B, H) plane
    mask = cols < BH
    b, j = cols // H, cols % H
    b_f = tl.load(BIAS + j, mask=mask, other=0.0).to(tl.float32)
    b_r = tl.load(BIAS + H + j, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(C0 + cols, mask=mask, other=0.0).to(tl.float32)
    for t in range(T):
        at = t * su_t + b * su_b + j  # u[t, b, j] of the (T, B, 3H) projections (rows may be strided)
        x_tilde = tl.load(U + at, mask=mask, other=0.0).to(tl.float32)
        f = _sigmoid(tl.load(U + at + H, mask=mask, other=0.0).to(tl.float32) + b_f)  # (3)
        r = _sigmoid(tl.load(U + at + 2 * H, mask=mask, other=0.0).to(tl.float32) + b_r)  # (4)
        s = tl.load(SKIP + t * ss_t + b * ss_b + j, mask=mask, other=0.0).to(tl.float32)
        c = f * c + (1.0 - f) * x_tilde  # (5)
        tl.store(C_OUT + t * BH + cols, c, mask=mask)
        tl.store(H_OUT + t * BH + cols, r * _tanh(c) + (1.0 - r) * s, mask=mask)  # (6)


@triton.jit
def _backward_kernel(GRAD_H, GRAD_C, U, su_t, su_b, BIAS, SKIP, ss_t, ss_b, C0, C, GRAD_U, GRAD_SKIP, GRAD_C0,
                     T, BH, H, HAS_GRAD_C: tl.constexpr, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < BH
    b, j = cols // H, cols % H
    b_f = tl.load(BIAS + j, mask=mask, other=0.0).to(tl.float32)
    b_r = tl.load(BIAS + H + j, mask=mask, other=0.0).to(tl.float32)
    carry = tl.zeros((BLOCK,), dtype=tl.float32)  # dL/dc_t through c_{t+1}
    for i in range(T):
        t = T - 1 - i
        at = t * su_t + b * su_b + j
        grad_at = t * BH * 3 + b * 3 * H + j  # the gradient is a dense (T, B, 3H)
        x_tilde = tl.load(U + at, mask=mask, other=0.0).to(tl.float32)
        f = _sigmoid(tl.load(U + at + H, mask=mask, other=0.0).to(tl.float32) + b_f)
        r = _sigmoid(tl.load(U + at + 2 * H, mask=mask, other=0.0).to(tl.float32) + b_r)
        s = tl.load(SKIP + t * ss_t + b * ss_b + j, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(C + t * BH + cols, mask=mask, other=0.0).to(tl.float32)
        if t > 0:
            prev = tl.load(C + (t - 1) * BH + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            prev = tl.load(C0 + cols, mask=mask, other=0.0).to(tl.float32)
        dh = tl.load(GRAD_H + t * BH + cols, mask=mask, other=0.0).to(tl.float32)
        tanh_c = _tanh(c)
        tl.store(GRAD_U + grad_at + 2 * H, dh * (tanh_c - s) * r * (1.0 - r), mask=mask)  # through r
        tl.store(GRAD_SKIP + t * BH + cols, dh * (1.0 - r), mask=mask)  # through the skip term
        dc = carry + dh * r * (1.0 - tanh_c * tanh_c)
        if HAS_GRAD_C:
            dc += tl.load(GRAD_C + t * BH + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(GRAD_U + grad_at + H, dc * (prev - x_tilde) * f * (1.0 - f), mask=mask)  # through f
        tl.store(GRAD_U + grad_at, dc * (1.0 - f), mask=mask)
        carry = dc * f
    tl.store(GRAD_C0 + cols, carry, mask=mask)


def _grid(B: int, H: int):
    return (triton.cdiv(B * H, BLOCK),)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``x`` (T, B, K) with unit stride along K (a view of a wider projection is fine), and its strides
    along T and B: the kernels read such views without a copy."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return x, x.stride(0), x.stride(1)


def forward(u: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor, c0: torch.Tensor):
    """h, c (T, B, H) in float32 for projections u (T, B, 3H) of any float dtype."""
    (u, su_t, su_b), (skip, ss_t, ss_b) = _rows(u), _rows(skip)
    c0, bias = c0.contiguous(), bias.contiguous()
    T, B, H = skip.shape
    h = torch.empty(T, B, H, device=u.device, dtype=torch.float32)
    c = torch.empty_like(h)
    _forward_kernel[_grid(B, H)](u, su_t, su_b, bias, skip, ss_t, ss_b, c0, h, c, T, B * H, H, BLOCK=BLOCK)
    return h, c


def backward(grad_h, grad_c, u, bias, skip, c0, *, c):
    """Gradients of u (its dtype), bias, skip and c0 given those of h and of every state c (or None), for
    the op's inputs u, bias, skip, c0 and the states c (T, B, H) it returned."""
    T, B, H = c.shape
    (u, su_t, su_b), (skip, ss_t, ss_b) = _rows(u), _rows(skip)
    grad_u = torch.empty(T, B, 3 * H, device=u.device, dtype=u.dtype)
    grad_skip = torch.empty(T, B, H, device=u.device, dtype=skip.dtype)
    grad_c0 = torch.empty(B, H, device=u.device, dtype=c0.dtype)
    has_grad_c = grad_c is not None  # None: only h was used, and no zero tensor is made to stand for it
    _backward_kernel[_grid(B, H)](grad_h.contiguous(), grad_c.contiguous() if has_grad_c else c, u, su_t, su_b,
                                  bias.contiguous(), skip, ss_t, ss_b, c0.contiguous(), c.contiguous(), grad_u,
                                  grad_skip, grad_c0, T, B * H, H, HAS_GRAD_C=has_grad_c, BLOCK=BLOCK)
    grad_bias = grad_u[..., H:].float().sum(dim=(0, 1)).to(bias.dtype)
    return grad_u, grad_bias, grad_skip, grad_c0
