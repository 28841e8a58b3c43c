"""What durability costs: journal entries written as extraction writes them (flushed to the disk with
fsync, file and folder, before they are trusted) versus the same writes left to the page cache.

    python benchmarks/bench_journal.py [--videos 300] [--frames 180]

A UCF-101 video has about 180 frames; its entry holds 180 x 896 float16 features (315 KiB).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESNET34_LEVELS, append_results  # noqa: E402
from pipeline.atomic import atomic_file  # noqa: E402


def write_entries(folder: Path, features: dict, count: int, durable: bool) -> float:
    folder.mkdir()
    start = time.perf_counter()
    for i in range(count):
        with atomic_file(folder / f"{i:05d}.npz", durable=durable) as f:
            np.savez(f, meta=np.array('{"status": "ok"}'), **features)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--frames", type=int, default=180)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    features = {lvl: rng.normal(size=(args.frames, dim)).astype(np.float16) for lvl, (_, dim) in RESNET34_LEVELS.items()}
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:  # the disk the repository is on
        plain = min(write_entries(Path(tmp) / f"plain{r}", features, args.videos, False) for r in range(2))
        durable = min(write_entries(Path(tmp) / f"durable{r}", features, args.videos, True) for r in range(2))
    per_plain, per_durable = 1000 * plain / args.videos, 1000 * durable / args.videos
    append_results(
        "bench_journal: fsync of journal entries",
        [
            f"{args.videos} entries of {args.frames} frames ({args.frames * 896 * 2 / 2**10:.0f} KiB each), written "
            "into a folder beside the repository; best of 2.",
            "",
            "| journal entry | per video |",
            "|---|---|",
            f"| written, left to the page cache | {per_plain:.2f} ms |",
            f"| written and flushed (fsync of the file and of the folder) | {per_durable:.2f} ms |",
            "",
            f"Durable / not: **{durable / plain:.2f}x**, {per_durable - per_plain:.2f} ms more per video.",
        ],
    )


if __name__ == "__main__":
    main()
