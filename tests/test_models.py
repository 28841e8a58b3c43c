"""The heads beside the RRN: tresnet starts as the identity and is causal; lstm, reslstm and tresnet
learn the sample dataset's order-only classes, where meanpool is at chance."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.models import ResLSTMHead, TemporalResidualBlock, TResNetHead
from pipeline.train import fit
from tests.test_train import QUIET, accuracy, small


def test_tresnet_starts_as_the_identity():
    torch.manual_seed(0)
    head = TResNetHead(16, 4, hidden=8, layers=3, window=5).eval()
    x = torch.randn(2, 30, 16)
    torch.testing.assert_close(head.blocks(x), x, rtol=0, atol=0)
    torch.testing.assert_close(head(x), head.classifier(x).mean(1))


def test_temporal_residual_block_sees_only_the_window_before_each_step():
    torch.manual_seed(1)
    block = TemporalResidualBlock(6, 5, window=3)
    torch.nn.init.normal_(block.out.weight)  # away from the identity start
    x = torch.randn(1, 12, 6)
    y = x.clone()
    y[:, 7] += 1.0  # change frame 7
    changed = (block(x) - block(y)).abs().sum(-1)[0] > 1e-6
    assert changed.tolist() == [t in (7, 8, 9) for t in range(12)]  # frame 7 reaches steps 7..7+k-1 only


def test_reslstm_projects_the_input_where_sizes_differ_and_uses_the_last_step():
    torch.manual_seed(2)
    head = ResLSTMHead(10, 3, hidden=6, layers=2).eval()
    assert head.project.weight.shape == (6, 10)
    x = torch.randn(2, 8, 10)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(head(x), head(y))  # the last step matters


@pytest.mark.parametrize("model", ["lstm", "reslstm", "tresnet"])
def test_each_head_learns_the_order_only_classes(model, sample_cache, tmp_path):
    fit(small(sample_cache, tmp_path / model, model=model), **QUIET)
    assert accuracy(tmp_path / model, order_only=True) >= 0.75  # meanpool: at most 0.6 (test_train)
    assert accuracy(tmp_path / model, order_only=False) >= 0.7


def test_sweep_compares_every_head_on_one_cache(sample_cache, tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", "--cache", str(sample_cache), "--models", "rrn,lstm,reslstm,tresnet,meanpool", "--hidden", "16",
        "--layers", "1", "--epochs", "1", "--lr", "1e-3", "--normalize", "--quiet", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["model"] for r in rows] == ["rrn", "lstm", "reslstm", "tresnet", "meanpool"]
    assert all(int(r["parameters"]) > 0 and float(r["seconds_per_epoch"]) >= 0 for r in rows)
    assert rows[2]["pool"] == "" and np.isfinite(float(rows[3]["video_top1"]))
    assert "| tresnet | mean |" in result.output
