"""Stage 1 throughput: the whole `mrrn extract` command against a bare ResNet-34 forward over the same
number of frames at the same size, with decoding alone beside them.

    python benchmarks/bench_extract.py [--crop 64] [--clips N] [--frames 200] [--videos DIR] [--device auto]

The load is UCF-101-like: 320x240 MPEG-4 AVIs at 25 fps (generated here with OpenCV's writer), or
every file in --videos. Preprocessing: shorter side = crop * 8/7 (256 for 224), centre crop. The bare
forward is torchvision's resnet34 in inference mode on random tensors of the crop size, batch as the
extraction's. By default 60 clips at crops up to 112 px (about 12,000 frames) and 12 at larger crops.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_results  # noqa: E402
from pipeline.backbone import resolve_device, resolve_precision  # noqa: E402
from pipeline.config import Preprocess, default_workers  # noqa: E402
from pipeline.datasets import VIDEO_EXTENSIONS  # noqa: E402
from pipeline.video import VideoReader, preprocess  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_clips(folder: Path, count: int = 6, frames: int = 200) -> list[Path]:
    """UCF-101-like clips: 320x240 MPEG-4 (XviD fourcc) at 25 fps, a textured scene panning and brightening."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        scene = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 2 + i)
        path = folder / f"clip{i}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 25.0, (320, 240))
        for t in range(frames):
            x, y = (3 * t) % 320, (2 * t) % 240
            writer.write(cv2.convertScaleAbs(scene[y : y + 240, x : x + 320], alpha=1.0, beta=t % 40))
        writer.release()
        paths.append(path)
    return paths


def bare_forward(device, crop: int, batch: int, frames: int, precision: str) -> float:
    """frames/s of torchvision's ResNet-34 (whole model, inference mode) on random (batch, 3, crop, crop)."""
    model = torchvision.models.resnet34().eval().to(device)
    x = torch.randn(batch, 3, crop, crop, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    cast = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)
    with torch.inference_mode(), cast:
        model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        done, start = 0, time.perf_counter()
        while done < frames:
            model(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def decode_only(paths: list[Path], pre: Preprocess | None) -> float:
    torch.set_num_threads(1)  # as in a decoding worker
    frames, start = 0, time.perf_counter()
    for path in paths:
        for chunk in VideoReader(path).chunks():
            if pre is not None:
                preprocess(torch.from_numpy(chunk), pre)
            frames += len(chunk)
    elapsed = time.perf_counter() - start
    torch.set_num_threads(os.cpu_count() or 1)
    return frames / elapsed


def whole_command(root: Path, out: Path, args, short_side: int) -> float:
    """Seconds for `mrrn extract` as a user runs it: a new process, imports, workers, cache and all."""
    cmd = [sys.executable, str(REPO / "cli.py"), "extract", "--dataset", "folder", "--root", str(root),
           "--out", str(out), "--backbone-weights", "random", "--short-side", str(short_side), "--crop", str(args.crop),
           "--device", args.device, "--quiet"]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += ["--workers", str(args.workers)] if args.workers is not None else []
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=Path, default=None)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=None, help="[default: extract's own]")
    ap.add_argument("--workers", type=int, default=None, help="[default: extract's own]")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    short_side = round(args.crop * 256 / 224)
    pre = Preprocess(short_side=short_side, crop=args.crop)
    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    clips = args.clips or (60 if args.crop <= 112 else 12)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.videos is None:
            paths = write_clips(tmp / "dataset" / "clips", clips, args.frames)
            source = f"{len(paths)} generated 320x240 MPEG-4 AVIs of {args.frames} frames (UCF-101-like)"
            root = tmp / "dataset"
        else:
            paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            source, root = f"{len(paths)} videos of --videos", tmp / "dataset"
            (root / "clips").mkdir(parents=True)
            for p in paths:
                (root / "clips" / p.name).symlink_to(p.resolve())
        frames = sum(sum(len(c) for c in VideoReader(p).chunks()) for p in paths)
        command_fps = frames / whole_command(root, tmp / "bench.h5", args, short_side)
        batch = args.batch_size or 64
        bare_fps = bare_forward(device, args.crop, batch, frames, precision)
        decode_fps = decode_only(paths, None)
        decode_pre_fps = decode_only(paths, pre if device.type == "cpu" else None)
    workers = args.workers if args.workers is not None else default_workers()
    append_results(
        f"bench_extract on {device} ({precision}), {args.crop} px",
        [
            f"Input: {source}, {frames} frames; short side {short_side}, crop {args.crop}, batch {batch}, "
            f"{workers} decoding worker(s), random weights.",
            "",
            "| measure | frames/s |",
            "|---|---|",
            f"| bare ResNet-34 forward (torchvision, random tensors of the crop size) | {bare_fps:.1f} |",
            f"| the whole `mrrn extract` command (new process, decode, preprocess, backbone, cache) | {command_fps:.1f} |",
            f"| decode only, one worker | {decode_fps:.1f} |",
            f"| decode + preprocess, one worker{'' if device.type == 'cpu' else ' (preprocessing runs on the GPU)'} "
            f"| {decode_pre_fps:.1f} |",
            "",
            f"Whole command / bare forward: **{command_fps / bare_fps:.2f}**. UCF-101's 2.5 million frames at this "
            f"rate: {2.5e6 / command_fps / 3600:.1f} h.",
        ],
    )


if __name__ == "__main__":
    main()
