"""The SRU: equal to a plain step-by-step reading of eqs. 2-6 (values and gradients), causal, shaped."""
from __future__ import annotations

import pytest
import torch

from pipeline.sru.modules import SRU, SRULayer


def reference_layer(layer: SRULayer, x: torch.Tensor) -> torch.Tensor:
    """Eqs. 2-6 one time step at a time, batch-first x (B, T, C) -> (B, T, H); no shared matmul."""
    H = layer.hidden_size
    W, Wf, Wr = layer.weight[:H], layer.weight[H : 2 * H], layer.weight[2 * H : 3 * H]
    Ws = layer.weight[3 * H :] if layer.project_skip else None
    bf, br = layer.bias[:H], layer.bias[H:]
    c = x.new_zeros(x.shape[0], H)
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        x_tilde = xt @ W.T
        f = torch.sigmoid(xt @ Wf.T + bf)
        r = torch.sigmoid(xt @ Wr.T + br)
        c = f * c + (1 - f) * x_tilde
        skip = xt @ Ws.T if Ws is not None else xt
        out.append(r * torch.tanh(c) + (1 - r) * skip)
    return torch.stack(out, dim=1)


def reference_stack(sru: SRU, x: torch.Tensor) -> torch.Tensor:
    for layer in sru.layers:
        x = reference_layer(layer, x)
    return x


@pytest.mark.parametrize("input_size, hidden, layers", [(6, 6, 1), (5, 7, 3), (9, 4, 2)])
def test_matches_step_by_step_equations_values_and_gradients(input_size, hidden, layers):
    torch.manual_seed(0)
    sru = SRU(input_size, hidden, layers).double()
    with torch.no_grad():  # non-zero biases, so they are exercised too
        for layer in sru.layers:
            layer.bias.normal_()
    x = torch.randn(3, 11, input_size, dtype=torch.float64, requires_grad=True)
    out, ref = sru(x), reference_stack(sru, x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, *sru.parameters()])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, *sru.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_the_recurrence_op_passes_gradcheck():
    torch.manual_seed(1)
    T, B, H = 5, 2, 3
    u = torch.randn(T, B, 3 * H, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2 * H, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    def op(u, bias, skip, c0):
        h, c = torch.ops.mrrn.sru_recurrence(u, bias, skip, c0)
        return h, c  # every state: their gradients flow back too

    assert torch.autograd.gradcheck(op, (u, bias, skip, c0))
    torch.library.opcheck(torch.ops.mrrn.sru_recurrence.default, (u, bias, skip, c0))


def test_causal_later_inputs_do_not_change_earlier_outputs():
    torch.manual_seed(2)
    sru = SRU(8, 16, 3)
    x = torch.randn(2, 20, 8)
    y = x.clone()
    y[:, 12:] = torch.randn(2, 8, 8)
    a, b = sru(x), sru(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_orthogonal_initialisation_and_shapes():
    sru = SRU(512, 256, 3)
    first = sru.layers[0]
    assert first.project_skip and first.weight.shape == (4 * 256, 512)
    assert not sru.layers[1].project_skip and sru.layers[1].weight.shape == (3 * 256, 256)
    for block in first.weight.detach().split(256):
        torch.testing.assert_close(block @ block.T, torch.eye(256), atol=1e-4, rtol=0)
    assert sru(torch.randn(4, 30, 512)).shape == (4, 30, 256)
    with pytest.raises(ValueError, match=r"SRU expects \(B, T, C\) with C = 512"):
        sru(torch.randn(30, 512))


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(3)
    sru = SRU(4, 4, 2, dropout=0.5)
    x = torch.randn(2, 6, 4)
    sru.eval()
    torch.testing.assert_close(sru(x), sru(x))
    sru.train()
    assert not torch.allclose(sru(x), sru(x))


@pytest.mark.parametrize("input_size", [6, 8])  # with and without the skip projection
def test_a_separate_skip_input_only_changes_the_highway_term(input_size):
    torch.manual_seed(4)
    layer = SRULayer(input_size, 8)
    x, other = torch.randn(5, 2, input_size), torch.randn(5, 2, input_size)
    torch.testing.assert_close(layer(x, skip_input=x)[0], layer(x)[0])
    h, h_other = layer(x)[0], layer(x, skip_input=other)[0]
    # h_t = r * tanh(c_t) + (1 - r) * skip: the gates and cell depend on x alone
    r = torch.sigmoid(torch.nn.functional.linear(x, layer.weight[16:24]) + layer.bias[8:])
    skip = (lambda v: torch.nn.functional.linear(v, layer.weight[24:])) if input_size != 8 else (lambda v: v)
    torch.testing.assert_close(h - h_other, (1 - r) * (skip(x) - skip(other)))
