"""Shared by the benchmarks: which machine this is, and appending results to results.md."""
from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

import torch

from pipeline.config import Preprocess
from pipeline.cache.identity import CacheIdentity, LevelSpec

RESULTS = Path(__file__).with_name("results.md")
# The paper's ResNet-34 levels (tap, width): the shape of the random features benchmarks write.
RESNET34_LEVELS = {"low": ("layer2", 128), "mid": ("layer3", 256), "high": ("layer4", 512)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}){gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def timed(fn, repeats=3) -> tuple[float, object]:
    """The best wall time of ``repeats`` calls of ``fn``, and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def append_results(title: str, lines: list[str]) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"\n## {title} — {stamp}\n\nMachine: {machine()}\n\n" + "\n".join(lines) + "\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by `make bench`; newest last.\n")
    with RESULTS.open("a") as f:
        f.write(text)
    print(text)


def synthetic_identity(classes: list[str]) -> CacheIdentity:
    """A cache configuration for caches the benchmarks fill with random features."""
    return CacheIdentity(
        backbone="resnet34", backbone_weights="random:seed=0", preprocess=Preprocess(),
        levels=tuple(LevelSpec(level, layer, dim) for level, (layer, dim) in RESNET34_LEVELS.items()),
        dtype="float16", precision="fp32", dataset="folder", classes=tuple(classes),
    )
