"""What bf16 extraction costs in accuracy: the same videos extracted with `--precision fp32` and with
`--precision bf16`, and the relative difference of the bf16 features against the float32 ones, per level.

    python benchmarks/bench_precision.py [--videos DIR] [--backbone resnet34] [--backbone-weights random]
                                         [--crop 224] [--clips 6]

The videos are every file in --videos, or ``--clips`` UCF-101-like clips generated here (bench_extract's).
Both caches store float32 (``--dtype float32``), so the difference is the arithmetic's alone. Per level,
over every frame: the relative error of a frame's feature vector, ||bf16 - fp32|| / ||fp32|| (median, 99th
percentile, largest), and the largest cosine distance (1 - cosine similarity) between the two. The trunk's weights are
``--backbone-weights`` (random: seeded, as the tests use; a local file or pretrained weights as extract
takes them), and the report says which.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_extract import load  # noqa: E402
from benchmarks.common import append_results  # noqa: E402
from pipeline.cache.reader import FeatureCache  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.extract.run import run_extract  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def extract(root: Path, out: Path, args, precision: str) -> Path:
    run_extract(ExtractConfig(dataset="folder", root=root, out=out, backbone=args.backbone,
                              backbone_weights=args.backbone_weights, seed=0, short_side=round(args.crop * 256 / 224),
                              crop=args.crop, dtype="float32", precision=precision, device="cpu"),
                progress=False, log=lambda m: None)
    return out


def level_errors(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """reference, other: (T, C) float32 features of the same frames."""
    norms = np.linalg.norm(reference, axis=1)
    relative = np.linalg.norm(other - reference, axis=1) / np.maximum(norms, 1e-12)  # (T,)
    cosine = (other * reference).sum(axis=1) / np.maximum(norms * np.linalg.norm(other, axis=1), 1e-12)  # (T,)
    return {"median": float(np.median(relative)), "p99": float(np.percentile(relative, 99)),
            "max": float(relative.max()), "cosine_distance": float(1 - cosine.min())}


def compare(fp32_cache: Path, bf16_cache: Path) -> tuple[dict[str, dict[str, float]], int, int, str]:
    """Per level, the errors of bf16 against fp32 over every frame both hold; the videos and frames compared,
    and the weights the caches record."""
    with FeatureCache(fp32_cache) as a, FeatureCache(bf16_cache) as b:
        keys = sorted(set(a.index) & set(b.index))
        errors = {level: level_errors(np.concatenate([a.video_features(k, level) for k in keys]).astype(np.float32),
                                      np.concatenate([b.video_features(k, level) for k in keys]).astype(np.float32))
                  for level in a.identity.level_widths}
        frames = sum(a.videos[a.index[k]].frames for k in keys)
        return errors, len(keys), frames, a.identity.backbone_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=Path, default=None, help="a folder of videos [default: generated clips]")
    ap.add_argument("--clips", type=int, default=6, help="generated clips when --videos is not given")
    ap.add_argument("--frames", type=int, default=100, help="frames of each generated clip")
    ap.add_argument("--backbone", default="resnet34")
    ap.add_argument("--backbone-weights", default="random")
    ap.add_argument("--crop", type=int, default=224)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, _, source = load(Path(tmp), args, args.clips)
        fp32, bf16 = (extract(root, Path(tmp) / f"{p}.h5", args, p) for p in PRECISIONS)
        errors, videos, frames, weights = compare(fp32, bf16)
    rows = [f"| {level} | {e['median']:.2e} | {e['p99']:.2e} | {e['max']:.2e} | {e['cosine_distance']:.1e} |"
            for level, e in errors.items()]
    append_results(
        f"bench_precision: bf16 against fp32 features, {args.backbone}, {args.crop} px",
        [f"Input: {source}; {videos} videos, {frames} frames compared; weights {weights}; both caches store "
         "float32, on the CPU.", "",
         "| level | relative error, median | 99th percentile | largest | largest 1 - cosine similarity |",
         "|---|---|---|---|---|", *rows],
    )


if __name__ == "__main__":
    main()
