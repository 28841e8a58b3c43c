"""Stage 1 throughput: full pipeline vs backbone alone (same device, batch size) and decode alone.

    python benchmarks/bench_extract.py [--videos DIR] [--short-side 256 --crop 224] [--batch-size 32]

Videos: every file in --videos; by default the real clips in ../shared/data/videos when present
(several containers and codecs), else the bundled sample dataset generated into a temporary folder.
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

from benchmarks.common import SHARED_VIDEOS, append_results  # noqa: E402
from pipeline.backbone import FeatureExtractor, load_backbone, resolve_device, resolve_precision  # noqa: E402
from pipeline.config import ExtractConfig, Preprocess, default_workers  # noqa: E402
from pipeline.datasets import VIDEO_EXTENSIONS  # noqa: E402
from pipeline.extract import run_extract  # noqa: E402
from pipeline.sample_data import write_sample_dataset  # noqa: E402
from pipeline.video import VideoReader, preprocess  # noqa: E402


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
        source = args.videos or (SHARED_VIDEOS if SHARED_VIDEOS.is_dir() else None)
        if source is None:
            write_sample_dataset(tmp / "sample")
            paths = sorted((tmp / "sample" / "videos").rglob("*.avi"))
            source_name = "the bundled sample dataset (80 videos, 128x96)"
        else:
            paths = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            source_name = f"{len(paths)} videos from {source}, each {args.repeat} times"
        root = tmp / "dataset" / "clips"  # a one-class folder dataset of links to the videos
        root.mkdir(parents=True)
        for copy in range(args.repeat):  # several links per video: enough frames to amortise start-up
            for p in paths:
                (root / f"{copy}_{p.name}").symlink_to(p.resolve())

        decode_fps = decode_only(paths, None)
        decode_pre_fps = decode_only(paths, pre if device.type == "cpu" else None)
        cfg = ExtractConfig(dataset="folder", root=root.parent, out=tmp / "bench.h5", weights="random",
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
