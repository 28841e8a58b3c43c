"""Training within a memory budget (--max-memory): the split's videos held whole when they fit, each rank's
share when several ranks train, streamed from the cache when even that does not fit; evaluation scores
every video exactly once whichever way the data is held."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.train.clips import clip_frames
from pipeline.train.level_data import load_level_data
from pipeline.train.loop import StepContext, evaluate, fit
from pipeline.train.heads import build_model
from pipeline.train.share_epochs import evaluate_share
from pipeline.train.shares import (
    FINITE_BLOCK,
    PARTITIONED,
    REPLICATED,
    STREAMED,
    all_finite,
    choose_mode,
    parse_size,
    partition,
)
from pipeline.train.streaming import SHUFFLE_GROUPS
from tests.conftest import REPO, one_line_error, run, small_train_config as small

CPU = torch.device("cpu")


def test_sizes_parse_and_bad_ones_are_one_line(sample_cache, tmp_path):
    assert parse_size("3G") == 3 * 2**30 and parse_size("512M") == 512 * 2**20 and parse_size("1.5GiB") == 3 * 2**29
    result = run("train", "--cache", sample_cache, "--level", "high", "--out", tmp_path / "r", "--max-memory", "lots")
    one_line_error(result, "--max-memory: lots: not a size (for example 3G, 512M)")


def test_the_mode_follows_the_budget():
    assert choose_mode(everything=100, largest_share=50, world=2, budget=100) == REPLICATED
    assert choose_mode(everything=101, largest_share=50, world=2, budget=100) == PARTITIONED
    assert choose_mode(everything=101, largest_share=101, world=1, budget=100) == STREAMED
    assert choose_mode(everything=300, largest_share=150, world=2, budget=100) == STREAMED


def test_a_partition_is_by_video_balanced_by_frames_seeded_and_complete():
    keys = [f"c/{i}" for i in range(50)]
    frames = {k: 10 + (i * 37) % 200 for i, k in enumerate(keys)}
    shares = partition(keys, frames, 3, seed=0)
    assert sorted(k for s in shares for k in s) == sorted(keys)  # every video once
    totals = [sum(frames[k] for k in s) for s in shares]
    assert max(totals) - min(totals) <= max(frames.values())
    assert partition(keys, frames, 3, seed=0) == shares  # every rank computes the same


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_finite_check_finds_a_non_finite_value_in_any_block(dtype):
    """Streamed windows and held levels are checked block by block: a value anywhere, at a block's edges
    included, is found; the largest finite values are not non-finite."""
    x = np.random.default_rng(0).normal(size=(2 * FINITE_BLOCK + 7) // 4 * 4).astype(dtype).reshape(-1, 4)
    assert all_finite(x) and all_finite(x[:0]) and all_finite(x[:, ::2])  # a strided view: numpy's own check
    for value in (np.inf, -np.inf, np.nan):
        for at in (0, FINITE_BLOCK - 1, FINITE_BLOCK, x.size - 1):
            y = x.copy()
            y.reshape(-1)[at] = value
            assert not all_finite(y) and not all_finite(y.T)  # y.T: not contiguous
    y = x.copy()
    y[0, :2] = np.finfo(dtype).max, -np.finfo(dtype).max
    assert all_finite(y)


def test_evaluation_scores_every_video_the_same_whether_held_or_streamed(sample_cache, tmp_path):
    cfg = small(sample_cache, tmp_path / "r", normalize=False)
    held = load_level_data(cfg, CPU, log=lambda m: None)
    streamed = load_level_data(small(sample_cache, tmp_path / "r", normalize=False, max_memory=2**20), CPU,
                               log=lambda m: None)
    assert held.mode == REPLICATED and streamed.mode == STREAMED
    assert streamed.test.keys == held.test.keys and streamed.width == held.width
    torch.manual_seed(0)
    model = build_model(cfg, held.width, len(held.classes), None, None)
    scoring = dict(num_classes=len(held.classes), batch_size=16, views="all")
    a = evaluate(model, held.features, held.test, StepContext(CPU), **scoring)
    b = evaluate_share(model, streamed.shares["test"], streamed.test.labels, StepContext(CPU), **scoring)
    np.testing.assert_allclose(b["scores"], a["scores"], rtol=1e-5, atol=1e-6)
    assert b["clip_acc"] == pytest.approx(a["clip_acc"]) and b["video_top1"] == pytest.approx(a["video_top1"])


def test_a_streamed_epoch_sees_every_clip_once_holding_a_few_groups_at_a_time(sample_cache, tmp_path):
    budget = 2**20
    data = load_level_data(small(sample_cache, tmp_path / "r", max_memory=budget), CPU, log=lambda m: None)
    part = data.shares["train"]
    assert len(part.groups) > 2 * SHUFFLE_GROUPS  # many groups: a real stream
    generator = torch.Generator().manual_seed(0)
    counts = part.window_clips(generator)
    seen, biggest = [], 0
    for window in part.windows(generator, CPU):
        seen += window.clip_video.tolist()
        biggest = max(biggest, window.features.nbytes)
    expected = [i for i, k in enumerate(data.train.keys) for _ in range(len(clip_frames(part.videos[k][1], part.clip)))]
    assert sorted(seen) == expected and sum(counts) == len(expected)  # every clip once
    assert biggest <= 2 * budget // 3  # a window is a few groups, never the level


def test_streamed_training_with_normalisation_uses_the_statistics_of_every_training_frame(sample_cache, tmp_path):
    held = load_level_data(small(sample_cache, tmp_path / "r", normalize=True), CPU, log=lambda m: None)
    streamed = load_level_data(small(sample_cache, tmp_path / "r", normalize=True, max_memory=2**20), CPU,
                               log=lambda m: None)
    torch.testing.assert_close(streamed.mean, held.mean)
    torch.testing.assert_close(streamed.std, held.std)


def test_train_under_a_small_budget_streams_says_so_and_scores_every_test_video(sample_cache, tmp_path):
    lines = []
    summary = fit(small(sample_cache, tmp_path / "r", epochs=2, max_memory=2**20), progress=False, log=lines.append)
    assert any("more than the memory budget (--max-memory 1.0 MiB): it is streamed from the cache" in x for x in lines)
    scores = np.load(tmp_path / "r" / "scores_test.npz")
    assert len(scores["keys"]) == 32 and np.isfinite(scores["scores"]).all()
    assert summary.final["epoch"] == 2 and 0.0 <= summary.final["video_top1"] <= 1.0


def test_two_ranks_over_the_budget_each_hold_their_share(sample_cache, tmp_path):
    """--nproc 2 with a budget below the split but above half of it: each rank holds its share, and the scores
    cover every test video once."""
    out = tmp_path / "two"
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "train", "--cache", str(sample_cache), "--level",
                             "high", "--out", str(out), "--hidden", "32", "--layers", "1", "--epochs", "2", "--lr", "1e-3",
                             "--normalize", "--quiet", "--nproc", "2", "--max-memory", "2.5M"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "each of the 2 ranks holds its share" in result.stderr
    scores = np.load(out / "scores_test.npz")
    assert len(scores["keys"]) == 32 and np.isfinite(scores["scores"]).all()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(np.isfinite(m["loss"]) for m in lines)


def test_twostream_that_would_stream_is_refused_in_one_line(sample_cache, flow_cache, tmp_path):
    result = run("train", "--cache", sample_cache, "--flow-cache", flow_cache, "--model", "twostream", "--level",
                 "high", "--out", tmp_path / "r", "--max-memory", "1M")
    one_line_error(result, "--model twostream holds its share of both levels in memory", "raise --max-memory")


def test_more_ranks_than_training_videos_to_share_out_is_refused_in_one_line(sample_cache, tmp_path, monkeypatch):
    """A rank of a shared-out run needs a training video of its own: refused before anything is read."""
    from pipeline.errors import TrainError

    monkeypatch.setenv("WORLD_SIZE", "64")  # this process as rank 0 of 64 (no process group is needed to plan)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainError, match=r"training videos for 64 ranks: each rank needs one of its own"):
        load_level_data(small(sample_cache, tmp_path / "r", max_memory=2**20), CPU, log=lambda m: None)
