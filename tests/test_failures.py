"""When things go wrong: never a silent wrong number, never a traceback for a condition of the user's own
world, never code from a data file, and after each failure a rerun with the cause removed ends where an
uninterrupted run ends. Real OS errors throughout: /dev/full for a full disk, RLIMIT_FSIZE for a size
limit, a read-only tmpfs where the machine allows mounting one, real kills of real processes."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.cache.reader import FeatureCache
from pipeline.errors import TrainError
from pipeline.train.loop import fit
from tests.conftest import assert_same_cache, copy_cache, feature_file, folder_dataset, one_line_error, QUIET, REPO, run, small_train_config

TINY = ["--hidden", "16", "--layers", "1", "--lr", "1e-3", "--lr-step", "100", "--normalize", "--quiet"]


def extract_args(root: Path, out: Path, *extra) -> list[str]:
    return ["extract", "--dataset", "folder", "--root", str(root), "--out", str(out), "--backbone-weights", "random",
            "--short-side", "64", "--crop", "64", "--batch-size", "16", "--workers", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    return folder_dataset(tmp_path_factory.mktemp("failures") / "videos", per_class=3)


@pytest.fixture(scope="module")
def whole(videos, tmp_path_factory) -> Path:
    """The cache of an uninterrupted run, to compare every recovered one with."""
    out = tmp_path_factory.mktemp("whole") / "whole.h5"
    assert run(*extract_args(videos, out)).exit_code == 0
    return out


# ----------------------------------------------------------------------------------------------
# Non-finite numbers are never reported


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_writes_no_scores(sample_cache, tmp_path):
    out = tmp_path / "run"
    result = run("train", "--cache", sample_cache, "--level", "high", "--out", out, "--epochs", "2", *TINY[:4],
                 "--lr", "1e30", "--quiet")
    one_line_error(result, f"{out}: training stopped: the loss is not finite at epoch 1, batch",
                   "learning rate (1e+30) is likely too high", "No checkpoint was written and no scores were written")
    assert not (out / "scores_test.npz").exists() and not (out / "summary.json").exists()
    assert not (out / "last.pt").exists()
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"metrics.jsonl holds {c}"))


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "inf"], "'inf' is not a finite number"),
    (["train", "--lr", "nan"], "'nan' is not a finite number"),
    (["train", "--lr", "0"], "not in the range x>0"),
    (["train", "--dropout", "1"], "not in the range 0<=x<1"),
    (["train", "--val-fraction", "1.5"], "not in the range 0<=x<1"),
    (["train", "--epochs", "0"], "x>=1"),
    (["predict", "v.avi", "--runs", "r", "--top", "0"], "x>=1"),
])
def test_options_out_of_range_are_refused_when_parsed(args, message, tmp_path):
    if args[0] == "train":
        args = [*args, "--cache", "c.h5", "--level", "high", "--out", str(tmp_path / "r")]
    one_line_error(run(*args), message)  # a user error like any other: one line, exit status 1


@pytest.mark.parametrize("weights, message", [("0,0,0", "add up to 0"), ("high=nan,mid=0.2,low=0.1", "high=nan"),
                                              ("high=-1,mid=1,low=1", "high=-1.0")])
def test_fusion_weights_must_be_finite_non_negative_and_not_all_zero(level_runs, tmp_path, weights, message):
    runs = [level_runs[lvl] for lvl in ("low", "mid", "high")]
    one_line_error(run("fuse", *runs, "--out", tmp_path / "f", "--weights", weights), message)
    assert not (tmp_path / "f" / "fused_scores.npz").exists()


def test_runs_with_non_finite_scores_or_weights_are_refused_by_name(level_runs, sample_dir, tmp_path):
    bad = Path(shutil.copytree(level_runs["high"], tmp_path / "bad"))
    with np.load(bad / "scores_test.npz") as z:
        arrays = dict(z)
    arrays["scores"][0, 0] = np.nan
    np.savez(bad / "scores_test.npz", **arrays)
    one_line_error(run("fuse", level_runs["low"], bad, "--out", tmp_path / "f", "--method", "sum"),
                   f"{bad / 'scores_test.npz'}: the scores are not finite")
    one_line_error(run("report", bad), "the scores are not finite")
    state = torch.load(bad / "last.pt", weights_only=True)
    next(v for v in state["model"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, bad / "last.pt")
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    one_line_error(run("predict", video, "--runs", bad), f"{bad / 'last.pt'}: the model's weights are not finite")


def test_unfinished_runs_are_not_fused_or_predicted(level_runs, sample_dir, tmp_path):
    unfinished = Path(shutil.copytree(level_runs["high"], tmp_path / "unfinished"))
    (unfinished / "summary.json").unlink()
    one_line_error(run("fuse", level_runs["low"], unfinished, "--out", tmp_path / "f", "--method", "sum"),
                   f"{unfinished}: not a finished run")
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    one_line_error(run("predict", video, "--runs", unfinished), f"{unfinished}: not a finished run")


# ----------------------------------------------------------------------------------------------
# Run directories: epochs, damaged files, code in checkpoints


def test_a_finished_run_is_extended_never_shortened(sample_cache, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--cache", sample_cache, "--level", "high", "--out", out, *TINY]
    assert run(*base, "--epochs", "4").exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("config.json", "summary.json", "metrics.jsonl")}
    one_line_error(run(*base, "--epochs", "2"), "holds a finished run of 4 epochs; a run is extended, never shortened")
    one_line_error(run(*base, "--epochs", "2", "--resume"), "never shortened")
    assert run(*base, "--epochs", "1").stderr.rstrip().endswith("use another --out for 1 epoch")  # not "1 epochs"
    one_line_error(run(*base, "--epochs", "6"), "pass --resume to extend it to 6")
    assert {name: (out / name).read_bytes() for name in before} == before  # untouched
    extended = run(*base, "--epochs", "6", "--resume")
    assert extended.exit_code == 0, extended.output
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "summary.json").read_text())["final"]["epoch"] == 6
    straight = fit(small_train_config(sample_cache, tmp_path / "straight", hidden=16, layers=1, epochs=6), **QUIET)
    assert straight.final["video_top1"] == json.loads((out / "summary.json").read_text())["final"]["video_top1"]


def test_damaged_run_files_are_one_line_errors(level_runs, sample_cache, sample_dir, tmp_path):
    runs = {name: Path(shutil.copytree(level_runs["high"], tmp_path / name)) for name in ("config", "ckpt", "scores")}
    (runs["config"] / "config.json").write_text('{"train": {"hidden": ')
    result = run("train", "--cache", sample_cache, "--level", "high", "--out", runs["config"], *TINY, "--resume")
    one_line_error(result, f"{runs['config'] / 'config.json'}: damaged run configuration")
    data = (runs["ckpt"] / "last.pt").read_bytes()
    (runs["ckpt"] / "last.pt").write_bytes(data[: len(data) // 2])
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    one_line_error(run("predict", video, "--runs", runs["ckpt"]), f"{runs['ckpt'] / 'last.pt'}: not a checkpoint")
    data = (runs["scores"] / "scores_test.npz").read_bytes()
    (runs["scores"] / "scores_test.npz").write_bytes(data[: len(data) // 2])
    one_line_error(run("fuse", level_runs["low"], runs["scores"], "--out", tmp_path / "f", "--method", "sum"),
                   "scores_test.npz: damaged score file")


class _Payload:
    """What a malicious checkpoint carries: unpickling it would create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(level_runs, sample_cache, sample_dir,
                                                                         tmp_path):
    shared = Path(shutil.copytree(level_runs["high"], tmp_path / "downloaded_run"))
    marker = tmp_path / "pwned"
    state = torch.load(shared / "last.pt", weights_only=True)
    torch.save({**state, "model": _Payload(marker)}, shared / "last.pt")
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    one_line_error(run("predict", video, "--runs", shared), f"{shared / 'last.pt'}: not a checkpoint mrrn can load safely")
    (shared / "summary.json").unlink()  # unfinished, so that train --resume opens last.pt
    result = run("train", "--cache", sample_cache, "--level", "high", "--out", shared, "--hidden", "128", "--layers",
                 "2", "--epochs", "40", "--lr", "1e-3", "--lr-step", "100", "--normalize", "--quiet", "--resume")
    one_line_error(result, "not a checkpoint mrrn can load safely")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# The user's world: devices, paths, full disks, read-only folders, dying workers


def test_bad_devices_and_out_paths_are_one_line_errors(sample_cache, level_runs, videos, tmp_path):
    train = ["train", "--cache", sample_cache, "--level", "high", *TINY]
    one_line_error(run(*train, "--out", tmp_path / "r", "--device", "banana"), "--device banana: not a device")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error(run(*train, "--out", a_file), f"{a_file}: exists and is not a directory")
    one_line_error(run("fuse", level_runs["low"], level_runs["high"], "--out", a_file, "--method", "sum"),
                   f"{a_file}: exists and is not a directory")
    one_line_error(run(*extract_args(videos, tmp_path)), f"{tmp_path}: is a directory")


def test_a_full_disk_during_training_and_fusion_names_the_file(sample_cache, level_runs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt.tmp").symlink_to("/dev/full")  # every write through it fails with ENOSPC, a real OS error
    base = ["train", "--cache", sample_cache, "--level", "high", "--out", out, "--epochs", "2", *TINY]
    one_line_error(run(*base), f"{out / 'last.pt'}: cannot write (disk full)")
    assert not (out / "last.pt").exists()  # space again: the rerun ends where an uninterrupted run ends
    assert run(*base, "--resume").exit_code == 0
    whole = tmp_path / "whole"
    assert run(*base[:6], whole, *base[7:]).exit_code == 0
    assert np.array_equal(np.load(out / "scores_test.npz")["scores"], np.load(whole / "scores_test.npz")["scores"])

    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "fused_scores.npz.tmp").symlink_to("/dev/full")
    one_line_error(run("fuse", level_runs["low"], level_runs["high"], "--out", fused, "--method", "sum"),
                   f"{fused / 'fused_scores.npz'}: cannot write (disk full)")


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, writes fail with EFBIG instead of a signal


def test_a_file_size_limit_during_extraction_keeps_what_was_done(videos, whole, tmp_path):
    out = tmp_path / "limited.h5"  # decoding in the process itself: workers' shared memory is a file too
    cmd = [sys.executable, str(REPO / "cli.py"), *extract_args(videos, out), "--workers", "0"]
    limited = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=120)
    lines = limited.stderr.strip().splitlines()
    assert limited.returncode == 1 and lines[-1].startswith("Error: ") and "cannot write (file too large" in lines[-1]
    assert "Traceback" not in limited.stderr
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0  # the limit lifted
    assert_same_cache(whole, out, exact=False)


@pytest.fixture
def read_only_dir(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a read-only tmpfs needs privileges this machine does not give")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_folder_is_one_line_error_for_every_writer(read_only_dir, videos, sample_cache, level_runs):
    one_line_error(run(*extract_args(videos, read_only_dir / "c.h5")), "cannot write (read-only file system)")
    one_line_error(run("train", "--cache", sample_cache, "--level", "high", "--out", read_only_dir / "r", *TINY),
                   f"{read_only_dir / 'r'}: cannot write (read-only file system)")
    one_line_error(run("fuse", level_runs["low"], level_runs["high"], "--out", read_only_dir / "f", "--method", "sum"),
                   "cannot write (read-only file system)")


def _grandchildren(pid: int) -> list[int]:
    """The processes two levels below ``pid``: the decoding workers, forked by the forkserver."""
    def children(p):
        try:
            return [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            return []
    return [g for c in children(pid) for g in children(c)]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the workers through /proc (Linux)")
def test_a_decoding_worker_killed_by_the_system_is_one_line_and_the_rerun_finishes(videos, whole, tmp_path):
    out = tmp_path / "c.h5"
    cmd = [sys.executable, str(REPO / "cli.py"), *extract_args(videos, out, "--batch-size", "4")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None and not killed:
        if list(Path(f"{out}.journal").glob("*.npz")):
            for worker in _grandchildren(proc.pid):
                os.kill(worker, signal.SIGKILL)  # what the OOM killer does
                killed.append(worker)
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    assert killed and proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith(f"Error: {out}: a decoding worker died") and "Traceback" not in stderr
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    assert_same_cache(whole, out, exact=False)


# ----------------------------------------------------------------------------------------------
# The journal and the cache: damage is set aside, found and repaired


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_a_damaged_journal_entry_is_set_aside_and_its_video_extracted_again(videos, whole, tmp_path, damage):
    from pipeline.cache.writer import CacheWriter

    out = tmp_path / "c.h5"
    with FeatureCache(whole) as c, CacheWriter(out, c.identity) as w:  # a journal as a killed run leaves it
        for rec in c.videos:
            w.add_video(rec, {lvl: c.video_features(rec.key, lvl) for lvl in c.levels})
        videos_done = len(c.videos)
    entry = sorted(Path(f"{out}.journal").glob("*.npz"))[0]
    data = entry.read_bytes()
    entry.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    inspect = run("inspect", out)
    assert f"pending     {videos_done - 1} finished video(s)" in inspect.output
    assert "damaged     1 journal entry" in inspect.output
    result = run(*extract_args(videos, out))
    assert result.exit_code == 0, result.output
    assert f"{entry}: damaged journal entry" in result.stderr and "extracted 1 video" in result.output
    assert (Path(f"{out}.journal") / "damaged" / entry.name).is_file()
    assert_same_cache(whole, out, exact=False)


def test_zeros_written_into_the_features_are_found_refused_and_repaired(videos, whole, sample_cache, tmp_path):
    out = tmp_path / "c.h5"
    copy_cache(whole, out)
    stored = feature_file(out)  # the part holding the first rows
    with h5py.File(stored, "r") as f:
        start = f["features/high"].id.get_chunk_info(0).byte_offset
    with open(stored, "r+b") as f:  # 8 KiB of zeros straight into the stored bytes, under HDF5's feet
        f.seek(start + 4096)
        f.write(b"\0" * 8192)
    verify = run("inspect", out, "--verify")
    assert verify.exit_code == 1 and "of level high are damaged (checksum mismatch)" in verify.output
    result = run("train", "--cache", out, "--level", "high", "--out", tmp_path / "r", *TINY)
    one_line_error(result, f"{out}: level high cannot be read", "--redo-damaged")
    repaired = run(*extract_args(videos, out, "--redo-damaged"))
    assert repaired.exit_code == 0 and "--redo-damaged: " in repaired.stderr, repaired.output
    assert run("inspect", out, "--verify").exit_code == 0
    assert_same_cache(whole, out, exact=False)


def test_a_damaged_video_table_is_refused_before_training(sample_cache, tmp_path):
    cache = tmp_path / "c.h5"
    copy_cache(sample_cache, cache)
    with h5py.File(cache, "r+") as f:
        f["videos/label"][3] = 99
    with pytest.raises(TrainError, match=r"damaged cache \(video '.*': label 99 / class .* disagree with the class "
                                         r"list\); run `mrrn inspect"):
        fit(small_train_config(cache, tmp_path / "r", epochs=1), **QUIET)


def test_images_renamed_as_videos_and_symlink_loops_are_not_videos(tmp_path):
    import cv2

    root = folder_dataset(tmp_path / "videos", per_class=1)
    cv2.imwrite(str(tmp_path / "still.png"), np.zeros((48, 64, 3), np.uint8))
    shutil.copy(tmp_path / "still.png", root / "walk" / "still.avi")
    (root / "jump" / "loop.avi").symlink_to("loop.avi")
    result = run(*extract_args(root, tmp_path / "c.h5"))
    assert result.exit_code == 0, result.output
    assert "failed: walk/still.avi: a PNG image, not a video" in result.output
    with FeatureCache(tmp_path / "c.h5") as c:
        assert sorted(v.key for v in c.videos) == ["jump/jump0.avi", "walk/walk0.avi"]
        assert all(v.frames_reported > 0 for v in c.videos)
