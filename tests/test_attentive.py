"""The attentive probe (--model attentive): its shape contract for any clip length, its heads derived from
the width, permutation invariance without positions; on the sample data it tells the order-only pairs apart
with its temporal positions and stays at chance without them ("Order Matters", arXiv 2503.24298); its runs
sweep, fuse, predict and reload, also from a record written before --no-positions existed."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.train.heads import AttentiveProbeHead, build_model
from pipeline.train.loop import fit
from tests.conftest import QUIET, accuracy, one_line_error, run
from tests.conftest import small_train_config as small

# Settings under which the probe learns the sample cache's order-only pairs (see test_train's RRN settings)
PROBE = dict(model="attentive", hidden=128, layers=1, epochs=30, lr=1e-3)
REVERSED = (("CircleGrow", "CircleShrink"), ("FadeRedToBlue", "FadeBlueToRed"), ("FillUp", "FillDown"))


def test_clips_of_any_length_give_one_score_row_each():
    torch.manual_seed(0)
    head = AttentiveProbeHead(16, 5, hidden=32, layers=2, heads=2, length=30).eval()
    for length in (30, 7, 1, 45):  # the training length, shorter, one frame, longer: positions interpolated
        assert head(torch.randn(3, length, 16)).shape == (3, 5)  # (B, T, C) -> (B, K)
    same_width = AttentiveProbeHead(32, 5, hidden=32, heads=4, queries=3).eval()
    assert isinstance(same_width.project, torch.nn.Identity) and same_width(torch.randn(2, 30, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"expected clips \(B, T, C\)"):
        head(torch.randn(30, 16))


def test_without_positions_a_clip_and_its_reversal_get_the_same_logits():
    """Attention pooling without positions is permutation invariant: frame order cannot change the scores."""
    torch.manual_seed(1)
    x = torch.randn(4, 30, 16)  # (B, T, C)
    blind = AttentiveProbeHead(16, 6, hidden=64, layers=2, heads=1, positions=False).eval()
    torch.testing.assert_close(blind(x.flip(1)), blind(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blind(x[:, torch.randperm(30)]), blind(x), rtol=1e-5, atol=1e-5)
    seeing = AttentiveProbeHead(16, 6, hidden=64, layers=2, heads=1).eval()  # positions start sinusoidal
    torch.testing.assert_close(seeing.positions.table[:, :2], torch.stack([torch.arange(30.0).sin(),
                                                                          torch.arange(30.0).cos()], dim=1))
    assert not torch.allclose(seeing(x.flip(1)), seeing(x), atol=1e-3)


def test_heads_are_64_wide_and_a_width_they_do_not_divide_is_refused_in_one_line(sample_cache, tmp_path):
    assert [TrainConfig(cache="c", out="r", model="attentive", hidden=h).attention_heads for h in (1024, 128, 48)] == [
        16, 2, 1]
    model = build_model(TrainConfig(cache="c", out="r", model="attentive", hidden=128, layers=2), 512, 8)
    assert [block.heads for block in model.head.blocks] == [2, 2] and model.head.positions.table.shape == (30, 128)
    with pytest.raises(ConfigError, match="--hidden 200 does not split into 64-wide attention heads") as err:
        TrainConfig(cache="c", out="r", model="attentive", hidden=200)
    assert "\n" not in str(err.value) and "192" in str(err.value)
    TrainConfig(cache="c", out="r", model="rrn", hidden=200)  # other heads have no attention heads
    result = run("train", "--cache", sample_cache, "--level", "high", "--model", "attentive", "--hidden", 100,
                 "--out", tmp_path / "r")
    one_line_error(result, "--hidden 100", "64-wide attention heads")
    assert not (tmp_path / "r").exists()


def test_under_bf16_autocast_the_projections_are_bf16_and_the_norms_float32():
    """Autocast computes the linear layers and attention in bf16; the residual stream stays float32 (the queries
    and positions are float32 parameters), so every LayerNorm reads and writes float32 on any device."""
    torch.manual_seed(2)
    head = AttentiveProbeHead(16, 5, hidden=64, layers=2, heads=1).eval()
    seen = []
    for module in head.modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear)):
            module.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, i[0].dtype, o.dtype)))
    x = torch.randn(3, 30, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x)  # (B, K)
    norms = {(i, o) for name, i, o in seen if name == "LayerNorm"}
    assert norms == {(torch.float32, torch.float32)} and len(seen) == 1 + 2 * 8 + 2  # per block: 3 norms, 5 linears
    assert {o for name, _, o in seen if name == "Linear"} == {torch.bfloat16}
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), head(x), atol=0.1, rtol=0.1)


@pytest.fixture(scope="module")
def probes(sample_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("attentive")
    fit(small(sample_cache, runs / "positions", **PROBE), **QUIET)
    fit(small(sample_cache, runs / "blind", **PROBE, positions=False), **QUIET)
    return runs


def test_positions_tell_the_order_only_pairs_apart_and_without_them_the_probe_is_at_chance(probes):
    assert accuracy(probes / "positions", order_only=True) >= 0.9
    assert accuracy(probes / "positions", order_only=False) >= 0.85  # chance: 1/8
    assert accuracy(probes / "blind", order_only=True) <= 0.6  # a pair's frames are the same: chance is 0.5
    # every clip of a reversed video is a clip of the original reversed (sample.py): the same scores, but for
    # the short test videos (g02_c02), which loop, and whose reversal loops other frames
    d = np.load(probes / "blind" / "scores_test.npz")
    keys, scores = list(map(str, d["keys"])), d["scores"]
    pairs = [(k, k.replace(a, b)) for a, b in REVERSED for k in keys if k.startswith(f"{a}/") and "_g02_c02" not in k]
    assert len(pairs) == 9
    # the same up to rounding: bf16 products sum the frames in another order when they come reversed
    atol = {"fp32": 1e-4, "bf16": 3e-3}[json.loads((probes / "blind" / "config.json").read_text())["precision"]]
    for key, reversed_key in pairs:
        np.testing.assert_allclose(scores[keys.index(reversed_key)], scores[keys.index(key)], atol=atol)


def test_an_attentive_run_predicts_its_stored_scores_and_reloads_a_record_without_positions(probes, sample_dir,
                                                                                          tmp_path):
    from pipeline.predict import predict
    from pipeline.train.rundir import load_run

    stored = np.load(probes / "positions" / "scores_test.npz")
    keys = list(map(str, stored["keys"]))
    key = "CircleShrink/v_CircleShrink_g01_c01.avi"
    result = predict([sample_dir / "videos" / key], [probes / "positions"], top=8, device="cpu")[0]
    expected = dict(zip(map(str, stored["classes"]), stored["scores"][keys.index(key)]))
    assert result.top[0][0] == "CircleShrink"
    for cls, p in result.top:
        assert p == pytest.approx(expected[cls], abs=2e-3)
    # a record written before the setting existed: positions on, the same model, the run already complete
    old = shutil.copytree(probes / "positions", tmp_path / "old")
    record = json.loads((old / "config.json").read_text())
    del record["train"]["positions"]
    (old / "config.json").write_text(json.dumps(record))
    assert load_run(old, torch.device("cpu")).cfg.positions
    cfg = TrainConfig.from_json({**record["train"], "out": str(old)})
    assert fit(cfg, **QUIET).already_complete
    again = predict([sample_dir / "videos" / key], [old], top=8, device="cpu")[0]
    assert [c for c, _ in again.top] == [c for c, _ in result.top]
    assert [p for _, p in again.top] == pytest.approx([p for _, p in result.top], abs=1e-6)


def test_attentive_sweeps_and_fuses_like_every_head(sample_cache, probes, tmp_path):
    result = run("sweep", "--cache", sample_cache, "--models", "attentive,meanpool", "--hidden", "64", "--layers", "1",
                 "--epochs", "1", "--lr", "1e-3", "--normalize", "--no-positions", "--quiet", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "s" / "results.csv")))
    assert [(r["model"], r["pool"], r["run"]) for r in rows] == [
        ("attentive", "attention (no positions)", "high_attentive_h64_l1_nopos"), ("meanpool", "", "high_meanpool")]
    assert json.loads((tmp_path / "s" / rows[0]["run"] / "config.json").read_text())["train"]["positions"] is False
    fused = run("fuse", probes / "positions", probes / "blind", "--method", "sum", "--out", tmp_path / "fused")
    assert fused.exit_code == 0, fused.output
