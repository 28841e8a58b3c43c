"""Stage 1 per backbone, and per number of cached views, in one run.

    python benchmarks/bench_backbones.py [--crops 112,224] [--backbones resnet34,...] [--device auto]
                                         [--precisions auto]

1. frames/s of each backbone's multi-level trunk as `mrrn extract` runs it (taps found from the model,
   batch norms folded, channels-last, random weights) on random frames of each crop size, at each of
   ``--precisions`` (``fp32,auto`` compares float32 with what `extract` picks here); ViTs take 224 px only.
2. frames/s of the whole extraction (decode, preprocess, backbone, cache) of the same generated clips
   with --views center, center,flip, five and ten, at 64 px with ResNet-34: what views cost.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_extract import write_clips  # noqa: E402
from benchmarks.common import append_results, timed  # noqa: E402
from pipeline.extract.backbone import FeatureExtractor, choose_backbone, load_backbone, resolve_device  # noqa: E402
from pipeline.config import VIEW_SETS, ExtractConfig  # noqa: E402
from pipeline.extract.run import run_extract  # noqa: E402
from pipeline.precision import extraction_precision, precision_flags  # noqa: E402

BACKBONES = ("resnet34", "resnet18", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_800mf",
             "convnext_tiny", "swin_t", "vit_b_16", "timm:vit_small_patch14_dinov2.lvd142m",
             "timm:vit_base_patch16_clip_224.openai", "timm:vit_base_patch16_siglip_224",
             "timm:convnextv2_tiny.fcmae_ft_in22k_in1k")


def trunk_fps(name: str, crop: int, device: torch.device, precision: str, batch: int) -> float:
    """Frames/s of backbone ``name``'s three levels on random (batch, 3, crop, crop) frames."""
    extractor = FeatureExtractor(load_backbone("random", 0, name), device, precision)
    x = torch.randn(batch, 3, crop, crop)

    def run():
        out = extractor(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    with precision_flags(precision, fixed_shapes=True):  # the flags extraction runs under
        extractor(x)  # warm-up: allocation, oneDNN / cuDNN algorithm choice
        seconds, _ = timed(run, repeats=3)
    return batch / seconds


def views_fps(device: torch.device, clips: int, frames: int) -> dict[str, float]:
    """Video frames/s of the whole extraction with each --views (ResNet-34, 64 px)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for cls in ("a", "b"):
            write_clips(root / cls, count=clips // 2, frames=frames)
        for views in ("center", *VIEW_SETS):  # the first run warms up (workers' server, kernels) and is not kept
            cfg = ExtractConfig(dataset="folder", root=root, out=Path(tmp) / f"{views}-{len(out)}.h5",
                                backbone_weights="random", short_side=73, crop=64, views=views,
                                workers=1, device=str(device), batch_size=64)
            started = time.perf_counter()
            summary = run_extract(cfg, progress=False, log=lambda m: None)
            out[views] = summary.frames / (time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", default="112,224")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-views", dest="views", action="store_false", help="Skip the views part.")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--precisions", default="auto",
                        help="extract --precision values, comma-separated (auto: what extract picks on this device)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precisions = list(dict.fromkeys(extraction_precision(p, device) for p in args.precisions.split(",")))
    crops = [int(c) for c in args.crops.split(",")]
    batch = 64 if device.type == "cuda" else 8
    columns = [(c, p) for c in crops for p in precisions]

    lines = [f"Random weights, batch {batch}; frames/s of the three levels (`extract`'s trunk); `--precision auto` "
             f"is {extraction_precision('auto', device)} here.", "",
             "| backbone | levels (low / mid / high) | " + " | ".join(f"{c} px, {p}" for c, p in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name in args.backbones.split(","):
        choice = choose_backbone(name, "random")
        widths = " / ".join(str(s.width) for s in choice.taps.levels)
        cells = []
        for crop, precision in columns:
            fixed = choice.fixed_size
            cells.append("-" if fixed and crop != fixed else f"{trunk_fps(name, crop, device, precision, batch):.1f}")
        lines.append(f"| {name} | {widths} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)

    fps = views_fps(device, args.clips, args.frames) if args.views else {}
    if fps:
        lines += ["", f"Whole extraction (`run_extract`: decode, preprocess, backbone, cache) of {args.clips} generated "
                  f"320x240 MPEG-4 clips of {args.frames} frames, ResNet-34 at 64 px, per --views:", "",
                  "| --views | views per frame | video frames/s | time / centre only |", "|---|---|---|---|"]
    for views, value in fps.items():
        lines.append(f"| {views} | {len(VIEW_SETS[views])} | {value:.1f} | {fps['center'] / value:.2f}x |")
    append_results(f"bench_backbones on {device.type}", lines)


if __name__ == "__main__":
    main()
