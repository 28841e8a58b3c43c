"""The Triton kernels of the SRU recurrence against the float64 step-by-step reference, on the CPU through
Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported, so each check runs in a fresh
process): values and gradients of the op and of whole layers. On a CUDA machine the same checks also run
compiled, on the GPU. How many kernels a training step launches is measured by benchmarks/bench_train.py."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import REPO

CHECK = textwrap.dedent('''
    import sys, torch
    from pipeline.sru import kernels as sru_triton, ops as sru_ops
    from pipeline.sru.modules import SRULayer
    device = sys.argv[1]
    if device == "cpu":  # route the op's CPU kernel through the Triton launchers (interpreted)
        torch.library.register_kernel("mrrn::sru_recurrence", "cpu", sru_triton.forward)
        torch.library.register_kernel("mrrn::sru_recurrence_backward", "cpu",
                                      lambda *grads_and_inputs: sru_triton.backward(*grads_and_inputs[:6], c=grads_and_inputs[6]))

    def reference(u, bias, skip, c0):
        """Eqs. 3-6 one time step at a time, float64 autograd."""
        H = c0.shape[-1]
        c, hs = c0, []
        for t in range(u.shape[0]):
            x_tilde, f_pre, r_pre = u[t].split(H, dim=-1)
            f, r = torch.sigmoid(f_pre + bias[:H]), torch.sigmoid(r_pre + bias[H:])
            c = f * c + (1 - f) * x_tilde
            hs.append(r * torch.tanh(c) + (1 - r) * skip[t])
        return torch.stack(hs), c

    def check(T, B, H, seed, strided=False, use_state=True):
        """The op against the reference. ``strided``: u and skip are views of one (T, B, 4H) projection, as
        in a layer with the skip projection; ``use_state``: the loss reads the last state as well as h
        (else the state's gradient is None)."""
        g = torch.Generator().manual_seed(seed)
        make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
        u, bias, skip, c0 = make(T, B, 3 * H), make(2 * H), make(T, B, H), make(B, H)
        leaves = [x.clone().requires_grad_() for x in (u, bias, skip, c0)]
        ref_h, ref_c = reference(*leaves)
        wh, wc = make(T, B, H), make(B, H) * use_state
        ref_grads = torch.autograd.grad((ref_h * wh).sum() + (ref_c * wc).sum(), leaves)
        if strided:
            both = torch.cat([u, skip], dim=-1).float().to(device).requires_grad_()
            ins = [both, *(x.float().to(device).requires_grad_() for x in (bias, c0))]
            u_in, skip_in = both.split([3 * H, H], dim=-1)
            h, c = torch.ops.mrrn.sru_recurrence(u_in, ins[1], skip_in, ins[2])
            ref_grads = [torch.cat([ref_grads[0], ref_grads[2]], dim=-1), ref_grads[1], ref_grads[3]]
        else:
            ins = [x.float().to(device).requires_grad_() for x in (u, bias, skip, c0)]
            h, c = torch.ops.mrrn.sru_recurrence(*ins)
        loss = (h * wh.float().to(device)).sum()
        if use_state:
            loss = loss + (c[-1] * wc.float().to(device)).sum()
        grads = torch.autograd.grad(loss, ins)
        torch.testing.assert_close(h.double().cpu(), ref_h, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c[-1].double().cpu(), ref_c, rtol=1e-4, atol=1e-5)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4)

    # H not a multiple of the block, T = 1, batch 1, a block boundary inside a batch row, non-zero c0
    for T, B, H in [(5, 3, 4), (1, 2, 3), (4, 1, 7), (3, 2, 130)]:
        check(T, B, H, seed=T * 100 + H)
    # strided views of one projection (no copy), and no gradient for the states (h alone is used)
    for T, B, H in [(5, 3, 4), (3, 2, 130)]:
        check(T, B, H, seed=T + H, strided=True)
        check(T, B, H, seed=T + H + 1, strided=True, use_state=False)
    check(4, 1, 7, seed=11, use_state=False)

    def layer_reference(layer, x, skip_input):
        """h of a whole layer in float64, and the gradients of its weight and bias for the loss sum(h * w)."""
        H = layer.hidden_size
        weight, bias = (p.detach().double().cpu().requires_grad_() for p in (layer.weight, layer.bias))
        x = x.double().cpu()
        skip = x if skip_input is None else skip_input.double().cpu()
        skip = skip @ weight[3 * H :].T if layer.project_skip else skip
        h, _ = reference(x @ weight[: 3 * H].T, bias, skip, x.new_zeros(x.shape[1], H))
        return h, weight, bias

    # whole layers: without and with the skip projection (the op then reads views of one projection), and
    # with a separate skip input (two-stream)
    torch.manual_seed(0)
    for n_in, n_hidden, separate in [(6, 6, False), (5, 7, False), (6, 6, True), (4, 9, True)]:
        layer = SRULayer(n_in, n_hidden).to(device)
        x = torch.randn(4, 3, n_in, device=device)
        skip_input = torch.randn(4, 3, n_in, device=device) if separate else None
        h, _ = layer(x, skip_input=skip_input)
        w = torch.randn_like(h)
        (h * w).sum().backward()
        ref_h, weight, bias = layer_reference(layer, x, skip_input)
        (ref_h * w.double().cpu()).sum().backward()
        torch.testing.assert_close(h.double().cpu(), ref_h, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.weight.grad.double().cpu(), weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.bias.grad.double().cpu(), bias.grad, rtol=1e-4, atol=1e-4)
    print("ok")
''')


def run_check(device: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK, device], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def test_triton_kernels_match_the_float64_reference_interpreted_on_the_cpu():
    result = run_check("cpu", {"TRITON_INTERPRET": "1"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_kernels_match_the_float64_reference_compiled_on_the_gpu():
    result = run_check("cuda", {})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
