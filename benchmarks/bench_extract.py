"""Stage 1 throughput: full pipeline vs backbone alone (same device, batch size) and decode alone.

    python benchmarks/bench_extract.py [--videos DIR] [--short-side 256 --crop 224] [--batch-size 32]

Videos: every file in --videos; by default six clips generated into a temporary folder the way UCF-101
stores its videos (320x240, 25 fps, MPEG-4 part 2 in AVI), 200 frames each, of moving texture.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_results  # noqa: E402
from pipeline.backbone import FeatureExtractor, load_backbone, resolve_device, resolve_precision  # noqa: E402
from pipeline.config import ExtractConfig, Preprocess, default_workers  # noqa: E402
from pipeline.datasets import VIDEO_EXTENSIONS  # noqa: E402
from pipeline.extract import run_extract  # noqa: E402
from pipeline.video import VideoReader, preprocess  # noqa: E402


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


def backbone_only(extractor: FeatureExtractor, pre: Preprocess, batch: int, frames: int) -> float:
    x = torch.randn(batch, 3, pre.crop, pre.crop)
    if extractor.device.type == "cuda":
        x = x.pin_memory()
    extractor(x)  # warm-up
    done, start = 0, time.perf_counter()
    while done < frames:
        extractor(x)
        done += batch
    if extractor.device.type == "cuda":
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=Path, default=None)
    ap.add_argument("--short-side", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="links per video in the benchmark dataset")
    args = ap.parse_args()
    pre = Preprocess(short_side=args.short_side, crop=args.crop)
    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.videos is None:
            paths = write_clips(tmp / "generated")
            source_name = f"{len(paths)} generated 320x240 MPEG-4 clips, each {args.repeat} times"
        else:
            paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            source_name = f"{len(paths)} videos of --videos, each {args.repeat} times"
        root = tmp / "dataset" / "clips"  # a one-class folder dataset of links to the videos
        root.mkdir(parents=True)
        for copy in range(args.repeat):  # several links per video: enough frames to amortise start-up
            for p in paths:
                (root / f"{copy}_{p.name}").symlink_to(p.resolve())

        decode_fps = decode_only(paths, None)
        decode_pre_fps = decode_only(paths, pre if device.type == "cpu" else None)
        cfg = ExtractConfig(dataset="folder", root=root.parent, out=tmp / "bench.h5", backbone_weights="random",
                            preprocess=pre, batch_size=args.batch_size, workers=args.workers, device=args.device)
        summary = run_extract(cfg, progress=False, log=lambda m: None)
        pipeline_fps = summary.frames_per_second
        extractor = FeatureExtractor(load_backbone("random"), device, precision)
        backbone_fps = backbone_only(extractor, pre, args.batch_size, max(4 * args.batch_size, summary.frames // 2))

    ratio = pipeline_fps / backbone_fps
    append_results(
        f"bench_extract on {device} ({precision})",
        [
            f"Input: {source_name}, {summary.frames} frames; short side {pre.short_side}, crop {pre.crop}, "
            f"batch {args.batch_size}, {args.workers} decoding worker(s), random weights.",
            "",
            "| measure | frames/s |",
            "|---|---|",
            f"| backbone only (preprocessed tensors in memory) | {backbone_fps:.1f} |",
            f"| full pipeline (`run_extract`: decode, preprocess, backbone, cache; whole call) | {pipeline_fps:.1f} |",
            f"| decode only, one worker | {decode_fps:.1f} |",
            f"| decode + preprocess, one worker{'' if device.type == 'cpu' else ' (preprocessing runs on the GPU)'} "
            f"| {decode_pre_fps:.1f} |",
            "",
            f"Full pipeline / backbone only: **{ratio:.1%}** (target: at least 85%).",
        ],
    )


if __name__ == "__main__":
    main()
