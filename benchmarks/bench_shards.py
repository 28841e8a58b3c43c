"""Reading shards joined into one contiguous file (`mrrn compact`) versus through an HDF5 virtual dataset over
them (what `extract --nproc` makes), timed as stage 2 reads them.

    python benchmarks/bench_shards.py [--shards 4] [--videos 13320] [--frames 24]

Stage 2 reads a level in bulk (`FeatureCache.load_level`) and, for prediction and inspection, single
videos. Both are timed warm (right after writing), best of 3.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESNET34_LEVELS, append_results, synthetic_identity, timed  # noqa: E402
from pipeline.cache.reader import VideoRecord  # noqa: E402
from pipeline.cache.writer import CacheWriter, compact  # noqa: E402

IDENTITY = synthetic_identity(["bench"])


def write_shards(folder: Path, shards: int, videos: int, frames: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = [folder / f"{r}-of-{shards}.h5" for r in range(shards)]
    for r, path in enumerate(paths):
        with CacheWriter(path, IDENTITY) as w:
            for i in range(r, videos, shards):
                feats = {lvl: rng.normal(size=(frames, dim)).astype(np.float16) for lvl, (_, dim) in RESNET34_LEVELS.items()}
                w.add_video(VideoRecord(f"bench/v{i:05d}.avi", 0, "bench", frames, 25.0, 320, 240, frames), feats)
            w.finish()
    return paths


def virtual_join(out: Path, shards: list[Path]) -> None:
    """One virtual dataset per level, the shards' rows one after another (no feature is copied)."""
    sizes = []
    for path in shards:
        with h5py.File(path, "r") as f:
            sizes.append(f["features"]["high"].shape[0])
    with h5py.File(out, "w", libver="latest") as f:
        for level, (_, dim) in RESNET34_LEVELS.items():
            layout = h5py.VirtualLayout(shape=(sum(sizes), dim), dtype=np.float16)
            start = 0
            for path, n in zip(shards, sizes):
                layout[start : start + n] = h5py.VirtualSource(str(path), f"features/{level}", shape=(n, dim))
                start += n
            f.create_virtual_dataset(f"features/{level}", layout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--videos", type=int, default=13320)
    ap.add_argument("--frames", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), args.shards, args.videos, args.frames)
        merged, virtual = Path(tmp) / "merged.h5", Path(tmp) / "virtual.h5"
        t_merge, _ = timed(lambda: _merge(merged, shards), repeats=1)
        t_vds_build, _ = timed(lambda: virtual_join(virtual, shards), repeats=1)

        def bulk_merged():  # the same h5py read as for the virtual file (FeatureCache.load_level does this)
            with h5py.File(merged, "r") as f:
                return f["features"]["high"][...]

        def bulk_virtual():
            with h5py.File(virtual, "r") as f:
                return f["features"]["high"][...]

        rows = np.random.default_rng(1).integers(0, args.videos * args.frames - args.frames, 2000)

        def videos_merged():
            with h5py.File(merged, "r") as f:
                ds = f["features"]["high"]
                return sum(float(ds[r : r + args.frames][0, 0]) for r in rows)

        def videos_virtual():
            with h5py.File(virtual, "r") as f:
                ds = f["features"]["high"]
                return sum(float(ds[r : r + args.frames][0, 0]) for r in rows)

        t_bulk_m, a = timed(bulk_merged)
        t_bulk_v, b = timed(bulk_virtual)
        assert a.shape == b.shape
        t_vid_m, _ = timed(videos_merged)
        t_vid_v, _ = timed(videos_virtual)
    frames = args.videos * args.frames
    append_results(
        "bench_shards: joining extraction shards, merge vs HDF5 virtual dataset",
        [
            f"{args.shards} shards, {args.videos} videos x {args.frames} frames = {frames} rows; level high "
            f"(512-d float16). Warm reads, best of 3.",
            "",
            "| join | time to join | read the high level (bulk) | 2000 single-video reads |",
            "|---|---|---|---|",
            f"| merge into one file (`mrrn compact`) | {t_merge:.2f} s | {t_bulk_m:.3f} s | {t_vid_m:.3f} s |",
            f"| HDF5 virtual dataset over the shards | {t_vds_build:.2f} s | {t_bulk_v:.3f} s | {t_vid_v:.3f} s |",
            "",
            f"Virtual / merged read time: bulk **{t_bulk_v / t_bulk_m:.2f}x**, single videos "
            f"**{t_vid_v / t_vid_m:.2f}x**.",
        ],
    )


def _merge(out: Path, shards: list[Path]) -> None:
    """One contiguous file: the shards joined by the index, then compacted (what `mrrn compact` does)."""
    with CacheWriter(out, IDENTITY) as w:
        w.absorb(shards)
        w.finish()
    compact(out)


if __name__ == "__main__":
    main()
