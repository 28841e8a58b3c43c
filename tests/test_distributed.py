"""Several processes on torch.distributed (gloo on CPU, launched by torchrun through --nproc): sharded
extraction joins into the single-process cache, a killed rank loses only its in-flight videos, and
2-process DDP training gives 1-process results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from pipeline.cache.reader import FeatureCache, shard_dir
from pipeline.train.level_data import load_level_data
from pipeline.distributed import balanced_shards
from pipeline.extract.run import run_extract
from pipeline.cache.journal import JournalEntry
from pipeline.train.loop import fit
from tests.conftest import key_ordered, QUIET, REPO, small_extract_config, write_video
from tests.conftest import small_train_config as small


def mrrn(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_shards_are_balanced_by_size_not_count():
    sizes = [100, 1, 1, 1, 1, 50, 50, 2]
    shards = balanced_shards(sizes, 2)
    assert sorted(i for s in shards for i in s) == list(range(len(sizes)))  # each video exactly once
    assert [sum(sizes[i] for i in s) for s in shards] == [103, 103]  # by count it would be 4 and 4 videos
    assert shards == balanced_shards(sizes, 2)  # every rank computes the same
    assert balanced_shards([5], 3) == [[0], [], []]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist") / "videos"
    for c in range(3):
        for i in range(4):
            write_video(root / f"class{c}" / f"v{i}.avi", 20 + 7 * i + c, seed=10 * c + i)
    (root / "class1" / "broken.avi").write_bytes(b"not a video")
    return root


@pytest.fixture(scope="module")
def single_cache(videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "one.h5"
    run_extract(small_extract_config(videos, out), progress=False, log=lambda m: None)
    return out


def extract_args(videos: Path, out: Path) -> list[str]:
    return ["extract", "--dataset", "folder", "--root", str(videos), "--out", str(out), "--backbone-weights", "random",
            "--short-side", "64", "--crop", "64", "--batch-size", "16", "--workers", "1", "--quiet"]


def assert_same_cache(a: Path, b: Path) -> None:
    with FeatureCache(a) as one, FeatureCache(b) as two:
        assert [v.key for v in two.videos] == [v.key for v in one.videos]
        assert [(v.frames, v.label) for v in two.videos] == [(v.frames, v.label) for v in one.videos]
        assert [f.key for f in two.failed] == [f.key for f in one.failed] == ["class1/broken.avi"]
        assert two.identity == one.identity and two.splits == one.splits and two.verify() == []
        for level in ("low", "mid", "high"):
            np.testing.assert_allclose(key_ordered(two, level).astype(np.float32),
                                       key_ordered(one, level).astype(np.float32), rtol=1e-3, atol=1e-3)


def test_two_process_extraction_joins_into_the_single_process_cache(videos, single_cache, tmp_path):
    out = tmp_path / "two.h5"
    result = mrrn(*extract_args(videos, out), "--nproc", "2")
    assert result.returncode == 0, result.stderr
    assert "rank 0/2: extracted" in result.stdout and "rank 1/2: extracted" in result.stdout
    assert "joined 2 shard(s)" in result.stderr
    assert "OMP_NUM_THREADS" not in result.stderr  # no torchrun banner
    assert_same_cache(single_cache, out)
    assert not shard_dir(out).exists()  # the shards are gone once joined
    again = mrrn(*extract_args(videos, out), "--nproc", "2")  # a finished cache: nothing to do
    assert again.returncode == 0 and "extracted 0 videos" in again.stdout


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank among the descendants of ``parent``."""
    todo = [parent]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            return pid
        todo += [int(c) for c in children]
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the rank's process through /proc (Linux)")
def test_a_killed_rank_loses_only_its_in_flight_videos_and_a_rerun_completes_the_cache(videos, single_cache,
                                                                                       tmp_path):
    out = tmp_path / "killed.h5"
    journal = shard_dir(out) / "1-of-2.h5.journal"
    launcher = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *extract_args(videos, out), "--nproc", "2"],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 120
        while (not any(JournalEntry(p).ok for p in journal.glob("*.npz")) and time.time() < deadline
               and launcher.poll() is None):
            time.sleep(0.02)
        victim = _rank_pid(launcher.pid, 1)
        assert victim is not None and launcher.poll() is None, "rank 1 finished before it could be killed"
        os.kill(victim, signal.SIGKILL)  # rank 1 dies mid-extraction; torchrun stops rank 0
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0
    kept = sum(JournalEntry(p).ok for p in journal.glob("*.npz"))  # extracted (the broken video fails early)
    assert kept >= 1  # rank 1's finished videos survived its death
    inspect = CliRunner().invoke(main, ["inspect", str(out)])
    assert inspect.exit_code == 1 and "not yet joined; rerun the same `mrrn extract`" in inspect.output

    rerun = mrrn(*extract_args(videos, out), "--nproc", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert f"1-of-2.h5: {kept} of " in rerun.stderr  # rank 1 resumed its shard: "resuming ...: K of N videos"
    assert_same_cache(single_cache, out)


@pytest.mark.parametrize("uneven", [False, True])
def test_two_process_training_gives_the_one_process_results(sample_cache, tmp_path, uneven):
    # no dropout and IEEE float32: the same computation exactly (bf16 rounds differently when a batch is split)
    settings = dict(hidden=32, layers=1, epochs=3, dropout=0.0, precision="fp32")
    one = small(sample_cache, tmp_path / "one", **settings)
    batch = 28
    if uneven:  # a last batch of a single clip: rank 1 has nothing and joins the all-reduce with weight 0
        import torch

        batch = load_level_data(one, torch.device("cpu"), log=lambda m: None).train.num_clips - 1
        one = small(sample_cache, tmp_path / "one", batch_size=batch, **settings)
    fit(one, **QUIET)
    result = mrrn("train", "--cache", str(sample_cache), "--level", "high", "--out", str(tmp_path / "two"),
                  "--hidden", "32", "--layers", "1", "--epochs", "3", "--dropout", "0", "--lr", "1e-3",
                  "--lr-step", "100", "--normalize", "--batch-size", str(batch), "--precision", "fp32", "--quiet",
                  "--nproc", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("video top-1") == 1  # rank 0 alone reports
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3  # written once, by rank 0
    for got, want in zip(lines, expected):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        for key in ("train_acc", "clip_acc", "video_top1", "video_top5", "mean_class_acc"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), key
    a, b = np.load(tmp_path / "one" / "scores_test.npz"), np.load(tmp_path / "two" / "scores_test.npz")
    assert list(a["keys"]) == list(b["keys"])  # every test video once
    np.testing.assert_allclose(b["scores"], a["scores"], atol=1e-4)


def test_two_process_training_on_cached_views_gives_the_one_process_results(videos, tmp_path):
    """Every rank draws the same view for each clip, and evaluation averages the views over the ranks'
    shares of the clips exactly as one process does."""
    cache = tmp_path / "flip.h5"
    run_extract(small_extract_config(videos, cache, views="center,flip"), **QUIET)
    fit(small(cache, tmp_path / "one", hidden=16, layers=1, epochs=2, dropout=0.0, batch_size=8, allow_missing=True,
              precision="fp32"), **QUIET)
    result = mrrn("train", "--cache", str(cache), "--level", "high", "--out", str(tmp_path / "two"), "--hidden", "16",
                  "--layers", "1", "--epochs", "2", "--dropout", "0", "--lr", "1e-3", "--lr-step", "100", "--normalize",
                  "--batch-size", "8", "--allow-missing", "--precision", "fp32", "--quiet", "--nproc", "2")
    assert result.returncode == 0, result.stderr
    lines, expected = ([json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                       for run in ("two", "one"))
    for got, want in zip(lines, expected):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert got["clip_acc"] == pytest.approx(want["clip_acc"], abs=1e-9)
    a, b = np.load(tmp_path / "one" / "scores_test.npz"), np.load(tmp_path / "two" / "scores_test.npz")
    np.testing.assert_allclose(b["scores"], a["scores"], atol=1e-4)


def test_more_processes_than_gpus_is_refused_in_one_line_before_anything_starts(monkeypatch, videos, tmp_path):
    """NCCL cannot put two ranks on one GPU: --nproc beyond the GPUs is refused up front by the launcher,
    and under a torchrun started by hand by the rank that has no GPU. (The machine's GPU count is set
    here; the check itself is the real code.)"""
    import torch

    from pipeline.distributed import Rank, check_gpus
    from pipeline.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^--nproc 2: each process needs its own GPU and this machine has 1; "
                                          r"use --nproc 1, or --device cpu$"):
        check_gpus(2, "auto")
    check_gpus(2, "cpu")  # gloo on the CPU: any number
    check_gpus(1, "cuda")
    assert Rank(0, 2, 0).device(torch.device("cuda")) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"rank 1 needs GPU cuda:1, but this machine has 1"):
        Rank(1, 2, 1).device(torch.device("cuda"))
    assert Rank(1, 2, 1).device(torch.device("cpu")) == torch.device("cpu")

    result = CliRunner().invoke(main, [*extract_args(videos, tmp_path / "c.h5"), "--nproc", "2"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == (
        "Error: --nproc 2: each process needs its own GPU and this machine has 1; use --nproc 1, or --device cpu")
    assert not (tmp_path / "c.h5").exists()
