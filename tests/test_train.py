"""Stage 2 on the sample cache: the RRN learns frame order where meanpool cannot; determinism, resume,
refusals, and the run directory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from pipeline.config import TrainConfig
from pipeline.evaluate.metrics import video_metrics
from pipeline.train.heads import MeanPoolHead, RRNHead
from pipeline.errors import TrainError
from pipeline.train.loop import fit
from tests.conftest import copy_cache, QUIET, REPO, accuracy, folder_dataset, one_line_error, run, small_extract_config
from tests.conftest import small_train_config as small


@pytest.fixture(scope="module")
def trained(sample_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    fit(small(sample_cache, runs / "rrn"), **QUIET)
    fit(small(sample_cache, runs / "meanpool", model="meanpool"), **QUIET)
    return runs


def test_rrn_learns_frame_order_where_meanpool_is_at_chance(trained):
    assert accuracy(trained / "rrn", order_only=False) >= 0.75  # chance: 1/8
    assert accuracy(trained / "rrn", order_only=True) >= 0.8
    assert accuracy(trained / "meanpool", order_only=True) <= 0.6  # the pairs' frames are the same: chance is 0.5
    assert accuracy(trained / "meanpool", order_only=False) < accuracy(trained / "rrn", order_only=False)


def test_run_directory_holds_its_record_metrics_checkpoints_and_scores(trained, sample_cache):
    run = trained / "rrn"
    record = json.loads((run / "config.json").read_text())
    assert record["train"]["lr"] == 1e-3 and record["train"]["model"] == "rrn"
    assert record["cache"]["weights"] == "random:seed=0"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, 31))
    assert set(lines[0]) >= {"loss", "train_acc", "clip_acc", "video_top1", "video_top5", "mean_class_acc", "seconds"}
    last = torch.load(run / "last.pt", weights_only=True)  # plain data: no code runs when a run is opened
    assert last["epoch"] == 30 and {"model", "optimizer", "config"} <= set(last)
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["best_video_top1"] == max(m["video_top1"] for m in lines)
    d = np.load(run / "scores_test.npz")
    assert d["scores"].shape == (32, 8) and len(d["keys"]) == 32
    np.testing.assert_allclose(d["scores"].sum(1), 1.0, rtol=1e-5)
    assert lines[-1]["video_top1"] == pytest.approx(accuracy(run, order_only=False))


def test_paper_defaults_live_in_the_config():
    cfg = TrainConfig(cache="c.h5", out="r")
    assert (cfg.hidden, cfg.layers, cfg.pool, cfg.epochs, cfg.batch_size, cfg.dropout, cfg.sru_dropout) == (
        1024, 3, "mean", 12, 28, 0.5, 0.0)
    assert [cfg.lr_at(e) for e in (0, 7, 8, 11)] == pytest.approx([1e-5, 1e-5, 1e-6, 1e-6])
    assert TrainConfig(cache="c", out="r", level="low").learning_rate == 1e-4
    assert TrainConfig(cache="c", out="r", level="mid").lr_at(8) == pytest.approx(1e-5)
    assert (cfg.clip.length, cfg.clip.stride, cfg.clip.max_clips) == (30, 8, 20)


def test_the_rrn_head_pools_its_per_step_scores_by_mean_or_max_over_time():
    """Eqs. 8 and 9: the clip's scores are the mean, or the max, over time of per-step scores. The head is
    causal, so the mean-pooled head on the clip's first t+1 and first t frames gives step t's scores."""
    torch.manual_seed(0)
    x = torch.randn(4, 12, 16)  # (B, T, C)
    mean_head = RRNHead(16, 5, hidden=8, layers=2, pool="mean").eval()
    max_head = RRNHead(16, 5, hidden=8, layers=2, pool="max").eval()
    max_head.load_state_dict(mean_head.state_dict())  # the same weights: only the pooling differs
    assert mean_head(x).shape == (4, 5) and mean_head(x[:, :1]).shape == (4, 5)  # (B, K) for any clip length
    means = [mean_head(x[:, : t + 1]) for t in range(12)]  # (B, K) each: the mean of steps 0..t
    steps = torch.stack([means[0]] + [(t + 1) * means[t] - t * means[t - 1] for t in range(1, 12)], dim=1)
    torch.testing.assert_close(max_head(x), steps.amax(dim=1), atol=1e-5, rtol=1e-4)  # (B, K)
    assert not torch.allclose(max_head(x), mean_head(x))
    meanpool = MeanPoolHead(16, 5).eval()
    torch.testing.assert_close(meanpool(x), meanpool(x.flip(1)))  # blind to order by construction


def test_video_metrics_by_hand():
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.2, 0.7]])
    labels = np.array([0, 2, 2, 2])
    m = video_metrics(scores, labels, 3)
    assert m["video_top1"] == pytest.approx(0.5)  # videos 0 and 3
    assert m["mean_class_acc"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert m["video_top5"] == 1.0


class NanFromCall(torch.nn.Module):
    """A real head whose output turns NaN from its ``first``-th call on (as a diverging run's does)."""

    def __init__(self, head: torch.nn.Module, first: int):
        super().__init__()
        self.head, self.first, self.calls = head, first, 0

    def forward(self, x):
        self.calls += 1
        out = self.head(x)
        return out * float("nan") if self.calls >= self.first else out


@pytest.mark.parametrize("world", [1, 2])
def test_a_non_finite_loss_names_its_first_batch(world):
    """One CPU process stops at once; on a GPU or with several ranks (here: rank 0 of 2, without a process
    group) no step waits for the host, and the first bad batch is named at the end of the epoch."""
    from pipeline.train.level_data import ClipSet
    from pipeline.distributed import Rank
    from pipeline.train.loop import NonFiniteLoss, StepContext, train_one_epoch

    torch.manual_seed(0)
    features = torch.randn(40, 1, 6)  # (frames, V, C)
    clips = ClipSet(keys=["a", "b"], labels=torch.tensor([0, 1]), clip_rows=torch.arange(40).view(10, 4),
                    clip_video=torch.arange(10) % 2)
    model = NanFromCall(RRNHead(6, 2, hidden=4, layers=1), first=3)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(NonFiniteLoss) as err:
        train_one_epoch(model, optimizer, features, clips, StepContext(torch.device("cpu"), Rank(0, world)),
                        batch_size=2, generator=torch.Generator().manual_seed(0))
    assert (err.value.batch, err.value.batches) == (3, 5)
    assert model.calls == (3 if world == 1 else 5)  # at once, or at the end of the epoch


def test_same_seed_same_numbers(sample_cache, tmp_path):
    a = fit(small(sample_cache, tmp_path / "a", epochs=4), **QUIET)
    b = fit(small(sample_cache, tmp_path / "b", epochs=4), **QUIET)
    c = fit(small(sample_cache, tmp_path / "c", epochs=4, seed=1), **QUIET)
    drop = ("seconds",)
    strip = lambda m: {k: v for k, v in m.items() if k not in drop}  # noqa: E731
    assert strip(a.final) == strip(b.final)
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "scores_test.npz")["scores"],
                                  np.load(tmp_path / "b" / "scores_test.npz")["scores"])
    assert strip(c.final) != strip(a.final)


def test_resume_after_kill_ends_where_an_uninterrupted_run_ends(sample_cache, tmp_path):
    args = ["train", "--cache", str(sample_cache), "--level", "high", "--hidden", "128", "--layers", "2",
            "--epochs", "12", "--lr", "1e-3", "--normalize", "--quiet"]
    whole = tmp_path / "whole"
    assert CliRunner().invoke(main, [*args, "--out", str(whole)]).exit_code == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "cli.py", *args, "--out", str(killed)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and (
            not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    refused = CliRunner().invoke(main, [*args, "--out", str(killed)])
    assert refused.exit_code == 1 and "pass --resume to continue it" in refused.stderr
    resumed = CliRunner().invoke(main, [*args, "--out", str(killed), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stderr
    a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in b] == list(range(1, 13))
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}
    np.testing.assert_array_equal(np.load(whole / "scores_test.npz")["scores"], np.load(killed / "scores_test.npz")["scores"])


def test_a_finished_run_is_not_redone_and_another_configuration_is_refused(trained, sample_cache):
    again = fit(small(sample_cache, trained / "rrn"), **QUIET)
    assert again.already_complete
    with pytest.raises(TrainError, match=r"holds a run of another configuration \(.*hidden: that run 128, this run 64"):
        fit(small(sample_cache, trained / "rrn", hidden=64), **QUIET)


def test_a_moved_cache_is_the_same_cache_but_another_one_is_refused(sample_cache, tmp_path):
    fit(small(sample_cache, tmp_path / "r", epochs=1), **QUIET)
    moved = tmp_path / "moved.h5"
    copy_cache(sample_cache, moved)
    assert fit(small(moved, tmp_path / "r", epochs=1), **QUIET).already_complete
    other = tmp_path / "other.h5"
    from dataclasses import replace

    from pipeline.cache.reader import FeatureCache
    from pipeline.cache.writer import CacheWriter

    with FeatureCache(sample_cache) as c:
        identity = replace(c.identity, backbone_weights="random:seed=9")
    with CacheWriter(other, identity) as w:
        w.finish()
    with pytest.raises(TrainError, match="cache weights: that run random:seed=0, this run random:seed=9"):
        fit(small(other, tmp_path / "r", epochs=1), **QUIET)


def test_refuses_a_cache_without_the_level(sample_cache, tmp_path):
    cache = tmp_path / "no_low.h5"
    copy_cache(sample_cache, cache)
    with h5py.File(cache, "r+") as f:
        del f["features/low"]
    result = CliRunner().invoke(main, ["train", "--cache", str(cache), "--level", "low", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.stderr == f"Error: {cache}: no level 'low' in this cache (it has: mid, high)\n"


@pytest.mark.parametrize("value", [np.nan, -np.inf])
@pytest.mark.parametrize("max_memory", [None, 1 << 20], ids=["in-memory", "streamed"])
def test_refuses_non_finite_features(sample_cache, tmp_path, value, max_memory):
    cache = tmp_path / "nan.h5"
    copy_cache(sample_cache, cache)
    with h5py.File(cache, "r+") as f:
        f["features/high"][5, 7] = value
    with pytest.raises(TrainError, match=r"non-finite features in 1 video\(s\): Checkerboard/v_Checkerboard_g01_c01.avi"):
        fit(replace(small(cache, tmp_path / "r"), max_memory=max_memory), **QUIET)


def test_refuses_split_videos_missing_from_the_cache_unless_allowed(tmp_path):
    from pipeline.extract.run import run_extract

    root = folder_dataset(tmp_path / "data", per_class=4)
    (root / "walk" / "walk3.avi").write_bytes(b"")  # fails to decode: in the split, not in the cache
    cache = tmp_path / "c.h5"
    run_extract(small_extract_config(root, cache, test_fraction=0.25), **QUIET)
    cfg = small(cache, tmp_path / "r", epochs=1)
    with pytest.raises(TrainError, match=r"1 of the \d+ (train|test) videos of split 1 are not in the cache "
                                         r"\(1 failed to decode\): walk/walk3.avi; --allow-missing"):
        fit(cfg, **QUIET)
    warnings = []
    fit(small(cache, tmp_path / "r", epochs=1, allow_missing=True), progress=False, log=warnings.append)
    assert any("going on without them" in w for w in warnings)


def test_refuses_an_unknown_split(sample_cache, tmp_path):
    with pytest.raises(TrainError, match=r"no split 2 in this cache \(it has: 1\)"):
        fit(small(sample_cache, tmp_path / "r", split=2), **QUIET)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_resumes_records_its_precision_and_evaluates_deterministically(sample_cache, tmp_path):
    """The CUDA paths: TF32 recorded, fused Adam, resume from a checkpoint loaded on the CPU (RNG states
    and Adam's steps where torch wants them), and evaluation that gives the same scores every time."""
    from pipeline.train.level_data import load_level_data
    from pipeline.train.loop import StepContext, evaluate

    cfg = small(sample_cache, tmp_path / "r", epochs=2, device="cuda")
    fit(cfg, **QUIET)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["precision"] == "tf32"
    extended = fit(small(sample_cache, tmp_path / "r", epochs=3, device="cuda"), resume=True, **QUIET)
    assert extended.resumed_from == 2 and extended.final["epoch"] == 3
    whole = fit(small(sample_cache, tmp_path / "whole", epochs=3, device="cuda"), **QUIET)
    assert whole.final["video_top1"] == pytest.approx(extended.final["video_top1"], abs=1 / 32)
    device = torch.device("cuda")
    data = load_level_data(cfg, device, log=lambda m: None)
    from pipeline.train.rundir import load_run

    model = load_run(tmp_path / "r", device).model
    a, b = (evaluate(model, data.features, data.test, StepContext(device), num_classes=len(data.classes),
                     batch_size=7)["scores"] for _ in range(2))
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_projections_learn_like_fp32(sample_cache, tmp_path):
    fit(small(sample_cache, tmp_path / "bf16", device="cuda", precision="bf16"), **QUIET)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    assert accuracy(tmp_path / "bf16", order_only=False) >= 0.7


def test_cpu_bf16_projections_learn_like_fp32_and_tf32_is_refused_there(sample_cache, tmp_path):
    """--precision bf16 on the CPU is recorded and trains under CPU autocast; tf32 is refused in one line
    before anything is written."""
    fit(small(sample_cache, tmp_path / "bf16", precision="bf16", device="cpu"), **QUIET)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    assert accuracy(tmp_path / "bf16", order_only=False) >= 0.7
    result = run("train", "--cache", sample_cache, "--level", "high", "--device", "cpu", "--precision", "tf32",
                 "--out", tmp_path / "tf32")
    one_line_error(result, "--precision tf32", "NVIDIA GPUs only")
    assert not (tmp_path / "tf32").exists()


def test_cpu_auto_is_bf16_only_with_native_bf16_and_a_resumed_run_keeps_its_precision(sample_cache, tmp_path,
                                                                                       monkeypatch):
    """auto records fp32 on a CPU without native bf16 (detection forced off) and bf16 on one with it; a run
    begun in fp32 and resumed on a native-bf16 CPU goes on in fp32."""
    record = tmp_path / "r" / "config.json"
    monkeypatch.setattr("pipeline.precision.cpu_computes_bf16", lambda: False)
    fit(small(sample_cache, tmp_path / "r", epochs=1, device="cpu"), **QUIET)
    assert json.loads(record.read_text())["precision"] == "fp32"
    monkeypatch.setattr("pipeline.precision.cpu_computes_bf16", lambda: True)
    fit(small(sample_cache, tmp_path / "new", epochs=1, device="cpu"), **QUIET)
    assert json.loads((tmp_path / "new" / "config.json").read_text())["precision"] == "bf16"
    extended = fit(small(sample_cache, tmp_path / "r", epochs=2, device="cpu"), resume=True, **QUIET)
    assert extended.resumed_from == 1 and json.loads(record.read_text())["precision"] == "fp32"
