"""The heads beside the RRN: tresnet starts as the identity and is causal; lstm, reslstm, tresnet and
twostream learn the sample dataset's order-only classes, where meanpool is at chance; RGB and flow
streams are joined frame by frame, trained together, swept and fused."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.config import FlowSpec
from pipeline.train.level_data import LevelTable
from pipeline.train.two_streams import join_streams, stack_streams
from pipeline.train.heads import ResLSTMHead, TemporalResidualBlock, TResNetHead, TwoStreamHead
from pipeline.errors import TrainError
from pipeline.train.loop import fit
from tests.conftest import QUIET, accuracy, make_identity
from tests.conftest import small_train_config as small


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
    assert "| rgb | high | tresnet | 16 | 1 | mean |" in result.output


def test_stack_streams_puts_each_flow_image_beside_the_frame_it_arrives_at():
    rgb = np.arange(5)[:, None] * np.ones((1, 2))  # (T=5, 2): frame t has value t
    flow = 10 + np.arange(4)[:, None] * np.ones((1, 2))  # (T-1, 2): flow 0 is motion 0 -> 1
    both = stack_streams(rgb, flow)
    assert both.shape == (4, 4)
    assert both[:, 0].tolist() == [1, 2, 3, 4] and both[:, 2].tolist() == [10, 11, 12, 13]
    assert stack_streams(rgb, flow[:2]).shape == (2, 4)  # a shorter flow stream bounds the pairs
    assert torch.equal(stack_streams(torch.from_numpy(rgb), torch.from_numpy(flow)), torch.from_numpy(both))


def test_twostream_motion_reaches_appearance_but_not_the_other_way():
    torch.manual_seed(3)
    head = TwoStreamHead(6, 3, hidden=8, layers=2).eval()
    x = torch.randn(2, 10, 12, requires_grad=True)  # RGB | flow
    a, m = head.streams(x)  # (T, B, H) each
    grad_rgb, grad_flow = torch.autograd.grad(m.sum(), x, retain_graph=True)[0].split(6, dim=-1)
    assert grad_rgb.abs().sum() == 0 and grad_flow.abs().sum() > 0  # the motion stream never sees RGB
    grad_rgb, grad_flow = torch.autograd.grad(a.sum(), x)[0].split(6, dim=-1)
    assert grad_rgb.abs().sum() > 0 and grad_flow.abs().sum() > 0  # appearance sees both
    sums = head(x)
    head.fusion = "product"
    assert not torch.allclose(sums, head(x))
    with pytest.raises(ValueError, match="RGB | flow"):
        head(torch.randn(2, 10, 6))


def test_join_streams_refuses_caches_of_another_backbone_and_skips_videos_without_flow():
    def table(identity, videos, width=2):
        frames = sum(n for _, n, _ in videos.values())
        return LevelTable(np.ones((frames, width), np.float32), videos, ("a", "b"), identity, (("x",), ("y",)), "c.h5")

    rgb = table(make_identity(), {"x": (0, 5, 0), "y": (5, 3, 1), "z": (8, 1, 1)})
    flow = table(make_identity(modality="flow", flow=FlowSpec()), {"x": (0, 4, 0), "z": (4, 0, 1)})
    joined = join_streams(rgb, flow)
    assert joined.videos == {"x": (0, 4, 0)} and joined.features.shape == (4, 4)  # y: no flow; z: one frame
    other = table(make_identity(backbone_weights="random:seed=1", modality="flow", flow=FlowSpec()), {"x": (0, 4, 0)})
    with pytest.raises(TrainError, match="not two streams of one dataset and backbone .they differ in: weights"):
        join_streams(rgb, other)


@pytest.fixture(scope="module")
def twostream_run(sample_cache, flow_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("twostream") / "run"
    fit(small(sample_cache, out, model="twostream", flow_cache=str(flow_cache)), **QUIET)
    return out


def test_twostream_learns_the_order_only_classes_and_predict_reproduces_its_scores(twostream_run, sample_dir):
    from pipeline.predict import predict

    assert accuracy(twostream_run, order_only=True) >= 0.75
    assert accuracy(twostream_run, order_only=False) >= 0.7
    scores = np.load(twostream_run / "scores_test.npz")
    assert str(scores["streams"]) == "rgb+flow"
    key = "CircleShrink/v_CircleShrink_g01_c01.avi"
    result = predict([sample_dir / "videos" / key], [twostream_run], top=8)[0]
    expected = dict(zip(map(str, scores["classes"]), scores["scores"][list(scores["keys"]).index(key)]))
    for cls, p in result.top:  # both streams recomputed from the video, joined as in training
        assert p == pytest.approx(expected[cls], abs=2e-3)


def test_twostream_refuses_the_wrong_caches(sample_cache, flow_cache, tmp_path):
    with pytest.raises(TrainError, match="a rgb cache, but this run asks for --flow-cache"):
        fit(small(sample_cache, tmp_path / "a", model="twostream", flow_cache=str(sample_cache), epochs=1), **QUIET)
    with pytest.raises(TrainError, match="a flow cache, but this run asks for --modality rgb"):
        fit(small(flow_cache, tmp_path / "b", model="twostream", flow_cache=str(flow_cache), epochs=1), **QUIET)
    result = CliRunner().invoke(main, ["train", "--cache", str(sample_cache), "--model", "twostream", "--level",
                                       "high", "--out", str(tmp_path / "c")])
    assert result.exit_code == 1 and "needs" not in result.output and "--flow-cache" in result.output


def test_sweep_over_rgb_and_flow_writes_one_table(sample_cache, flow_cache, twostream_run, tmp_path):
    result = CliRunner().invoke(main, [
        "sweep", "--cache", str(sample_cache), "--flow-cache", str(flow_cache), "--modalities", "rgb,flow",
        "--models", "rrn,meanpool,twostream", "--stream-fusion", "sum,product", "--hidden", "16", "--layers", "1",
        "--epochs", "1", "--lr", "1e-3", "--normalize", "--quiet", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(r["streams"], r["model"], r["stream_fusion"]) for r in rows] == [
        ("rgb", "rrn", ""), ("rgb", "meanpool", ""), ("flow", "rrn", ""), ("flow", "meanpool", ""),
        ("rgb+flow", "twostream", "sum"), ("rgb+flow", "twostream", "product")]
    assert int(rows[4]["parameters"]) > int(rows[0]["parameters"])  # two SRU stacks
    assert "| flow | high | rrn | 16 | 1 | mean |" in result.output and "| twostream (product) | 16 | 1 |" in result.output
    # fusing the streams' runs: weights by modality and level
    fused = CliRunner().invoke(main, ["fuse", str(tmp_path / "high_rrn_h16_l1_mean"),
                                      str(tmp_path / "flow_high_rrn_h16_l1_mean"), str(twostream_run), "--out",
                                      str(tmp_path / "fused"), "--weights", "rgb:high=0.3,flow:high=0.3,rgb+flow=0.4"])
    assert fused.exit_code == 0, fused.output
    assert "rgb+flow high (twostream)" in fused.output
