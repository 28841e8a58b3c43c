"""Stage 1 end to end: sample extraction, equality with torchvision, resume after kill -9, bad videos,
refusals, --weights PATH and inspect --verify."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from cli import main
from pipeline.extract.backbone import sha256_file
from pipeline.cache.reader import CacheError, FeatureCache
from pipeline.config import Preprocess
from pipeline.datasets.index import VideoSet
from pipeline.extract.run import ExtractError, run_extract
from pipeline.extract.video import VideoReader, preprocess
from tests.conftest import (
    copy_cache,
    key_ordered,
    QUIET,
    REPO,
    folder_dataset,
    seeded_resnet,
    small_extract_config,
    torchvision_levels,
    write_video,
)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def extract_args(root: Path, out: Path, *extra) -> list[str]:
    return ["extract", "--dataset", "folder", "--root", str(root), "--out", str(out), "--backbone-weights", "random",
            "--short-side", "64", "--crop", "64", "--batch-size", "16", "--workers", "1", "--quiet", *extra]


def test_sample_dataset_extracts_every_video_with_its_metadata(sample_cache, sample_dir):
    with FeatureCache(sample_cache) as c:
        assert len(c.videos) == 80 and c.failed == ()
        assert c.classes[:2] == ("CircleGrow", "CircleShrink")
        assert c.identity.backbone_weights == "random:seed=0"
        assert c.identity.preprocess.crop == 64
        rec = c.videos[c.index["CircleGrow/v_CircleGrow_g01_c01.avi"]]
        assert (rec.width, rec.height, rec.fps, rec.label, rec.class_name) == (128, 96, 25.0, 0, "CircleGrow")
        frames = sum(len(ch) for ch in VideoReader(sample_dir / "videos" / rec.key).chunks())
        assert rec.frames == frames
        assert c.level_shape("low") == (c.total_frames, 128)
        assert sum(v.frames < 30 for v in c.videos) >= 4
        assert c.verify() == []


def test_cached_features_equal_a_direct_torchvision_forward(sample_cache, sample_dir):
    key = "FillUp/v_FillUp_g04_c02.avi"
    frames = np.concatenate(list(VideoReader(sample_dir / "videos" / key).chunks()))
    x = preprocess(torch.from_numpy(frames), Preprocess(short_side=64, crop=64))
    ref = torchvision_levels(seeded_resnet(0), x)
    with FeatureCache(sample_cache) as c:
        tolerance = {"fp32": 2e-3, "bf16": 3e-2}[c.identity.precision]  # bf16: 8 significant bits per product
        for level in ("low", "mid", "high"):
            got = torch.from_numpy(c.video_features(key, level).astype(np.float32))
            scale = ref[level].abs().max()
            torch.testing.assert_close(got, ref[level], rtol=tolerance, atol=tolerance * float(scale))


def test_auto_makes_bf16_caches_only_on_native_bf16_cpus_and_extends_a_cache_in_its_own_precision(tmp_path,
                                                                                                  monkeypatch):
    """Detection forced off, auto makes an fp32 cache; on a native-bf16 CPU the same command then extends it
    in fp32 (never refused, never mixed), while a new cache is bf16, and an explicit other precision is refused."""
    root = folder_dataset(tmp_path / "data", per_class=1)
    out, new = tmp_path / "c.h5", tmp_path / "new.h5"
    monkeypatch.setattr("pipeline.precision.cpu_computes_bf16", lambda: False)
    assert CliRunner().invoke(main, extract_args(root, out)).exit_code == 0
    write_video(root / "walk" / "walk9.avi", 12, seed=9)
    monkeypatch.setattr("pipeline.precision.cpu_computes_bf16", lambda: True)
    extended = CliRunner().invoke(main, extract_args(root, out))
    assert extended.exit_code == 0 and "2 were already done" in extended.output
    assert CliRunner().invoke(main, extract_args(root, new)).exit_code == 0
    with FeatureCache(out) as c, FeatureCache(new) as n:
        assert (c.identity.precision, len(c.videos), n.identity.precision) == ("fp32", 3, "bf16")
    refused = CliRunner().invoke(main, extract_args(root, out, "--precision", "bf16"))
    assert refused.exit_code == 1 and "precision: cache fp32, this run bf16" in refused.stderr


MODALITY_ARGS = {"rgb": [], "flow": ["--modality", "flow", "--flow-size", "64"]}


def _done(out: Path, journal: Path) -> tuple[int, int]:
    """(videos committed into the cache, videos waiting in its journal) while an extraction runs."""
    try:
        with FeatureCache(out) as c:
            committed = len(c.videos)
    except CacheError:  # not created yet
        committed = 0
    return committed, len(list(journal.glob("*.npz")))


# (modality, decoding workers, --commit-every): the journal alone, and commits every few videos, so the kill
# lands before, between and during commits
@pytest.mark.parametrize("modality, workers, commit_every", [("rgb", "1", "256"), ("rgb", "0", "256"), ("flow", "1", "256"),
                                                            ("rgb", "0", "2"), ("rgb", "1", "1")])
def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path, modality, workers, commit_every):
    """kill -9 while the loop runs (decoding workers or decoding in the process; journal writes and commits on
    their own thread), then the same command again: the cache an uninterrupted run makes. The journal never
    holds more than one commit interval, which is all a resume reads of it."""
    root = folder_dataset(tmp_path / "data", per_class=8, frames=30)
    whole = tmp_path / "whole.h5"
    assert CliRunner().invoke(main, extract_args(root, whole, *MODALITY_ARGS[modality])).exit_code == 0

    out = tmp_path / "killed.h5"
    cmd = [sys.executable, "cli.py", *extract_args(root, out, "--batch-size", "4", "--workers", workers,
                                                    "--commit-every", commit_every, *MODALITY_ARGS[modality])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = Path(f"{out}.journal")
    deadline = time.time() + 120
    while time.time() < deadline and sum(_done(out, journal)) < 5 and proc.poll() is None:
        time.sleep(0.02)
    helpers = descendants(proc.pid)  # the workers' server, the decoding workers, the resource tracker
    assert len(helpers) >= (2 if workers == "1" else 0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in helpers):
        time.sleep(0.05)
    assert not [p for p in helpers if alive(p)], "processes of the killed run live on (and keep its memory)"
    with FeatureCache(out) as c:  # still a valid, readable cache: nothing damaged, only videos still to extract
        assert all("an unfinished extraction: rerun the same `mrrn extract`" in p for p in c.verify()), c.verify()
    committed, journalled = _done(out, journal)
    assert journalled <= int(commit_every) and 5 <= committed + journalled < 16
    if commit_every != "256":
        assert committed >= 2  # the kill came after commits

    result = CliRunner().invoke(main, extract_args(root, out, *MODALITY_ARGS[modality]))
    assert result.exit_code == 0, result.output
    assert f"{committed + journalled} were already done" in result.output
    with FeatureCache(whole) as a, FeatureCache(out) as b:
        assert [v.key for v in a.videos] == [v.key for v in b.videos]
        assert [v.frames for v in a.videos] == [v.frames for v in b.videos]
        for level in ("low", "mid", "high"):
            np.testing.assert_allclose(key_ordered(a, level).astype(np.float32), key_ordered(b, level).astype(np.float32),
                                       rtol=1e-2, atol=1e-2)
        assert b.verify() == []
    assert not journal.exists()


@pytest.mark.parametrize("modality", ["rgb", "flow"])
def test_bad_videos_are_skipped_recorded_and_listed(tmp_path, modality):
    root = folder_dataset(tmp_path / "data")
    (root / "walk" / "zero.avi").write_bytes(b"")
    (root / "walk" / "text.avi").write_text("not a video\n" * 100)
    good = (root / "jump" / "jump0.avi").read_bytes()
    (root / "jump" / "trunc.avi").write_bytes(good[: len(good) // 2])
    out = tmp_path / "c.h5"
    result = CliRunner().invoke(main, extract_args(root, out, *MODALITY_ARGS[modality]))
    assert result.exit_code == 0, result.output
    assert "extracted 4 videos" in result.output and "3 failed" in result.output
    assert "failed: walk/zero.avi: empty file (0 bytes)" in result.output
    assert f"skipped {root / 'jump' / 'trunc.avi'}: truncated" in result.stderr
    with FeatureCache(out) as c:
        assert sorted(v.key for v in c.videos) == ["jump/jump0.avi", "jump/jump1.avi", "walk/walk0.avi", "walk/walk1.avi"]
        reasons = {f.key: f.reason for f in c.failed}
    assert reasons["walk/zero.avi"] == "empty file (0 bytes)"
    assert reasons["jump/trunc.avi"].startswith("truncated")
    assert "cannot open it as a video" in reasons["walk/text.avi"]

    if modality == "flow":  # and a video of one frame has no flow
        write_video(root / "walk" / "one.avi", 1)
        again = CliRunner().invoke(main, extract_args(root, out, *MODALITY_ARGS[modality]))
        assert "failed: walk/one.avi: a single frame: optical flow needs at least two" in again.output
    strict = CliRunner().invoke(main, extract_args(root, tmp_path / "strict.h5", "--strict", *MODALITY_ARGS[modality]))
    assert strict.exit_code == 1
    assert "(--strict)" in strict.stderr


def test_every_video_failing_is_an_error(tmp_path):
    root = tmp_path / "data"
    (root / "walk").mkdir(parents=True)
    (root / "walk" / "a.avi").write_bytes(b"")
    with pytest.raises(ExtractError, match="every video failed"):
        run_extract(small_extract_config(root, tmp_path / "c.h5"), **QUIET)


def test_other_configuration_is_refused(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1)
    out = tmp_path / "c.h5"
    assert CliRunner().invoke(main, extract_args(root, out)).exit_code == 0
    result = CliRunner().invoke(main, extract_args(root, out, "--crop", "48"))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {out}: made with a different configuration (preprocess.crop: cache 64, "
                                    "this run 48)")
    again = CliRunner().invoke(main, extract_args(root, out))
    assert again.exit_code == 0 and "2 were already done" in again.output


def test_a_second_concurrent_writer_is_refused(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1)
    out = tmp_path / "c.h5"
    assert CliRunner().invoke(main, extract_args(root, out)).exit_code == 0
    holder = subprocess.Popen(  # another process writing the same cache
        [sys.executable, "-c", "import sys, time; from pipeline.cache.reader import read_identity; "
         "from pipeline.cache.writer import CacheWriter; "
         "w = CacheWriter(sys.argv[1], read_identity(sys.argv[1])).__enter__(); print('locked', flush=True); "
         "time.sleep(120)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(main, extract_args(root, out))
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {out}: another mrrn process is writing this cache (lock {out}.lock is held); "
                             "wait for it to finish or use another --out\n")
    assert CliRunner().invoke(main, extract_args(root, out)).exit_code == 0  # free once that process is gone


def test_weights_path_round_trip(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1)
    weights = tmp_path / "r34.pth"
    torch.save(seeded_resnet(0).state_dict(), weights)
    by_path, by_seed = tmp_path / "path.h5", tmp_path / "seed.h5"
    run_extract(small_extract_config(root, by_path, backbone_weights=str(weights)), **QUIET)
    run_extract(small_extract_config(root, by_seed), **QUIET)
    with FeatureCache(by_path) as a, FeatureCache(by_seed) as b:
        assert a.identity.backbone_weights == f"sha256:{sha256_file(weights)}"
        np.testing.assert_array_equal(key_ordered(a, "high"), key_ordered(b, "high"))


def test_inspect_reports_and_verify_catches_a_corrupted_entry(sample_cache, tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(sample_cache), "--verify"])
    assert result.exit_code == 0, result.output
    assert "videos      80 ok, 0 failed" in result.output
    assert "level       high layer4: (" in result.output and "verify      ok" in result.output
    broken = copy_cache(sample_cache, tmp_path / "broken.h5")
    with h5py.File(broken, "r+") as f:
        f["features/high"][10] = np.inf
    result = CliRunner().invoke(main, ["inspect", str(broken), "--verify"])
    assert result.exit_code == 1
    assert "frame(s) of level high are not finite" in result.output
    assert result.stderr == f"Error: {broken}: 1 problem(s) found\n"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_extraction_matches_cpu_within_bf16_tolerance(tmp_path):
    """GPU path: uint8 frames pinned, preprocessed on the GPU, channels_last + bf16 autocast."""
    root = folder_dataset(tmp_path / "data", per_class=2)
    cpu, gpu = tmp_path / "cpu.h5", tmp_path / "gpu.h5"
    run_extract(small_extract_config(root, cpu, device="cpu"), **QUIET)
    run_extract(small_extract_config(root, gpu, device="cuda"), **QUIET)
    with FeatureCache(cpu) as a, FeatureCache(gpu) as b:
        assert b.identity.precision in ("bf16", "fp16")
        for level in ("low", "mid", "high"):
            x, y = key_ordered(a, level).astype(np.float32), key_ordered(b, level).astype(np.float32)
            assert np.abs(x - y).max() <= 0.03 * np.abs(x).max()


def test_the_cache_records_every_split_for_training(sample_cache, tmp_path):
    with FeatureCache(sample_cache) as c:
        train, test = c.splits[1]
        assert (len(train), len(test)) == (48, 32) and not set(train) & set(test)
        assert "CircleGrow/v_CircleGrow_g01_c01.avi" in test
    root = folder_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "c.h5"
    run_extract(small_extract_config(root, out, test_fraction=0.25), **QUIET)
    with FeatureCache(out) as c:
        train, test = c.splits[1]
    assert (len(train), len(test)) == (6, 2)


def test_the_old_weights_option_still_works_with_a_deprecation_note(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1)
    args = [a if a != "--backbone-weights" else "--weights" for a in extract_args(root, tmp_path / "c.h5")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "--weights is now --backbone-weights" in result.stderr
    assert "legacy_weights" not in result.stderr  # the note names options, never the code's own names
    with FeatureCache(tmp_path / "c.h5") as c:
        assert c.identity.backbone_weights == "random:seed=0"
    again = CliRunner().invoke(main, [*args, "--redo", "jump/jump0.avi"])  # one video: singular nouns
    assert again.exit_code == 0, again.output
    assert "extracted 1 video (20 frames) in" in again.stdout and "; 1 was already done," in again.stdout


def test_a_cache_records_which_resize_made_it_and_refuses_the_other():
    """Frames resized on a GPU (float32, rounded) differ by a grey level here and there from the CPU's
    uint8 kernel: caches made each way record it, and are not resumed by the other."""
    from pipeline.config import ExtractConfig, Resize
    from pipeline.extract.run import cache_identity

    cfg = ExtractConfig(dataset="folder", root=Path("r"), out=Path("c.h5"), backbone_weights="random")
    cpu, gpu = cache_identity(cfg, VIDEOS, "fp32", "cpu"), cache_identity(cfg, VIDEOS, "bf16", "cuda")
    assert cpu.to_json()["preprocess"]["resize"] == "bilinear-antialias-uint8"
    assert gpu.to_json()["preprocess"]["resize"] == "bilinear-antialias-float-rounded"
    assert "preprocess.resize: cache bilinear-antialias-uint8, this run bilinear-antialias-float-rounded" in \
        cpu.diff(gpu)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8))
    native = preprocess(frames, Preprocess(short_side=73, crop=64))
    rounded = preprocess(frames, Preprocess(short_side=73, crop=64, resize=Resize(kind="float-rounded")))
    grey_level = 1 / 255 / 0.224  # one grey level after normalisation (the largest std is 0.229)
    assert (native - rounded).abs().max() <= 1.01 * grey_level and not torch.equal(native, rounded)


VIDEOS = VideoSet("folder", Path("r"), ("a",), (), (), {})


def test_short_side_and_crop_override_only_themselves_on_the_weights_own_preprocessing():
    """swin_t's ImageNet weights were trained on bicubic frames resized to 232 px: --crop alone keeps both,
    --short-side alone keeps the weights' crop; random weights start from the paper's 256 / 224 bilinear."""
    from pipeline.config import ExtractConfig
    from pipeline.extract.run import cache_identity

    def made(**options):
        cfg = ExtractConfig(dataset="folder", root=Path("r"), out=Path("c.h5"), **options)
        pre = cache_identity(cfg, VIDEOS, "fp32").to_json()["preprocess"]
        return pre["short_side"], pre["crop"], pre["resize"]

    assert made(backbone="swin_t", crop=224) == (232, 224, "bicubic-antialias-uint8")
    assert made(backbone="swin_t", short_side=256) == (256, 224, "bicubic-antialias-uint8")
    assert made(backbone="swin_t", short_side=64, crop=48) == (64, 48, "bicubic-antialias-uint8")
    assert made(backbone_weights="random", crop=64) == (256, 64, "bilinear-antialias-uint8")


def test_the_size_options_are_checked_against_the_sizes_they_meet(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=1)
    args = [a for a in extract_args(root, tmp_path / "c.h5") if a not in ("--short-side", "--crop", "64")]
    result = CliRunner().invoke(main, [*args, "--short-side", "100"])
    assert result.exit_code == 1
    assert result.stderr == ("Error: the crop 224 (--crop's default for these weights) is larger than --short-side "
                             "100: frames are resized to the short side, then cropped\n")
    result = CliRunner().invoke(main, [*args, "--short-side", "100", "--crop", "120"])
    assert result.stderr.startswith("Error: --crop 120 is larger than --short-side 100")
    assert not (tmp_path / "c.h5").exists()


def test_a_crop_option_keeps_the_imagenet_weights_own_resize(tmp_path, monkeypatch):
    """Through the command line, with torchvision's ImageNet weights loaded the standard way (from
    $TORCH_HOME, where a seeded model stands in for the file torchvision would download): --crop 64 with
    efficientnet_b0, whose weights were trained on bicubic frames, keeps bicubic and the 256 px short side."""
    weights = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.efficientnet_b0().state_dict(), checkpoints / weights.url.rsplit("/", 1)[1])
    root = folder_dataset(tmp_path / "data", per_class=1, frames=8)
    out = tmp_path / "c.h5"
    result = CliRunner().invoke(main, ["extract", "--dataset", "folder", "--root", str(root), "--out", str(out),
                                       "--backbone", "efficientnet_b0", "--crop", "64", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    with FeatureCache(out) as c:
        stored = c.identity.to_json()
        assert stored["weights"] == "torchvision:EfficientNet_B0_Weights.IMAGENET1K_V1" and len(c.videos) == 2
    assert (stored["preprocess"]["short_side"], stored["preprocess"]["crop"], stored["preprocess"]["resize"]) == \
        (256, 64, "bicubic-antialias-uint8")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds processes through /proc (Linux)")
def test_on_the_cpu_extraction_decodes_in_the_command_by_default_with_one_workers_features(tmp_path):
    """Without --workers on the CPU the command starts no other process (decoding runs between batches),
    and the features are those a decoding worker gives."""
    root = folder_dataset(tmp_path / "data", per_class=4, frames=30)
    default, one = tmp_path / "default.h5", tmp_path / "one.h5"
    args = [a for a in extract_args(root, default, "--device", "cpu", "--batch-size", "4") if a not in ("--workers", "1")]
    proc = subprocess.Popen([sys.executable, "cli.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal, seen, helpers = Path(f"{default}.journal"), False, set()
    while proc.poll() is None:
        seen = seen or any(journal.glob("*.npz"))
        helpers |= set(descendants(proc.pid)) if seen else set()
        time.sleep(0.02)
    assert proc.returncode == 0 and seen, "the run ended before its first video was seen finished"
    assert helpers == set()
    assert CliRunner().invoke(main, extract_args(root, one, "--device", "cpu", "--batch-size", "4")).exit_code == 0
    with FeatureCache(default) as a, FeatureCache(one) as b:
        assert [v.key for v in a.videos] == [v.key for v in b.videos]
        for level in ("low", "mid", "high"):
            np.testing.assert_array_equal(key_ordered(a, level), key_ordered(b, level))
