"""Cache layout: reading a whole level in bulk, our layout (one dataset per level) versus one HDF5 dataset
per video (the layout per-video tools use), and what the per-chunk Fletcher-32 checksums cost.

    python benchmarks/bench_cache.py [--videos 13320] [--frames 24]

UCF-101 has 13,320 videos; the default keeps UCF-101's object count with fewer frames per video
so the benchmark fits a small disk. Both files are read right after being written (warm page cache).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESNET34_LEVELS, append_results, synthetic_identity, timed  # noqa: E402
from pipeline.cache.reader import FeatureCache, VideoRecord  # noqa: E402
from pipeline.cache.writer import CacheWriter  # noqa: E402

IDENTITY = synthetic_identity(["bench"])


def cold(read) -> float | None:
    """One read after the kernel's page cache is dropped (root only; None elsewhere)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return None
    start = time.perf_counter()
    read()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=13320)
    ap.add_argument("--frames", type=int, default=24)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ours, per_video = Path(tmp) / "ours.h5", Path(tmp) / "per_video.h5"
        start = time.perf_counter()
        with CacheWriter(ours, IDENTITY) as w, h5py.File(per_video, "w") as pv:
            for i in range(args.videos):
                feats = {lvl: rng.normal(size=(args.frames, dim)).astype(np.float16) for lvl, (_, dim) in RESNET34_LEVELS.items()}
                key = f"bench/v{i:05d}.avi"
                w.add_video(VideoRecord(key, 0, "bench", args.frames, 25.0, 320, 240, args.frames), feats)
                g = pv.create_group(f"v{i:05d}")
                for lvl, arr in feats.items():
                    g.create_dataset(lvl, data=arr)
            w.finish()
        build = time.perf_counter() - start

        plain = Path(tmp) / "plain.h5"  # the same cache with each level contiguous, without checksums
        shutil.copy(ours, plain)
        with h5py.File(plain, "r+") as f:
            for level in RESNET34_LEVELS:
                data = f["features"][level][...]
                del f["features"][level]
                f["features"].create_dataset(level, data=data)

        def read_ours(path=ours):
            with FeatureCache(path) as c:
                return c.load_level("high")

        def read_per_video():
            with h5py.File(per_video, "r") as f:
                return np.concatenate([f[name]["high"][...] for name in sorted(f)])

        t_ours, a = timed(read_ours)
        t_plain, _ = timed(lambda: read_ours(plain))
        t_pv, b = timed(read_per_video)
        assert np.array_equal(a, b)
        cold_ours, cold_plain = cold(read_ours), cold(lambda: read_ours(plain))
        size_ours, size_pv = ours.stat().st_size, per_video.stat().st_size
    frames = args.videos * args.frames
    append_results(
        "bench_cache: bulk read of one level",
        [
            f"{args.videos} videos x {args.frames} frames = {frames} rows; level high (512-d float16, "
            f"{frames * 512 * 2 / 2**20:.0f} MiB). Best of 3 warm reads. Building both files: {build:.1f} s.",
            "",
            "| layout | read high level | file size |",
            "|---|---|---|",
            f"| mrrn: one dataset per level, 1 MiB chunks with Fletcher-32 checksums (`FeatureCache.load_level`) "
            f"| {t_ours:.3f} s | {size_ours / 2**20:.0f} MiB |",
            f"| the same, contiguous, without checksums | {t_plain:.3f} s | |",
            f"| one dataset per video and level | {t_pv:.3f} s | {size_pv / 2**20:.0f} MiB |",
            "",
            f"Per-video layout / mrrn layout read time: **{t_pv / t_ours:.1f}x**. Checksums / none: "
            f"**{t_ours / t_plain:.2f}x** warm" + (f", **{cold_ours / cold_plain:.2f}x** from a cold page cache "
                                                  f"({cold_ours:.3f} s vs {cold_plain:.3f} s)." if cold_ours else
                                                  " (no cold-cache figure: dropping the page cache needs root)."),
        ],
    )


if __name__ == "__main__":
    main()
