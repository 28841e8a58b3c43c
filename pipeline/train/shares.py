"""How much of a level a training process holds: the memory budget, the three ways of holding the data,
each rank's share of the videos, and reading chosen videos' rows in large contiguous reads.

- ``replicated``: every rank holds every video the run uses (the whole split), as mrrn always did; the
  results do not depend on the number of ranks.
- ``partitioned``: under ``--nproc N``, when every rank's copy would not fit, each rank holds only its share
  of the training, test and validation videos (by video, balanced by frames, seeded).
- ``streamed``: when even a rank's share does not fit, it reads its videos group by group while it trains
  (``streaming.py``).

docs/training.md ("Memory") says how sampling differs between them. ``frame_sums`` gives the float64 sums of a
rank's training frames that ``--normalize``'s statistics add up over the ranks, whichever way they are held.
"""
from __future__ import annotations

import os
import re

import numpy as np

from pipeline.errors import ConfigError

MEMORY_FRACTION = 0.5  # the default budget: this share of the machine's available memory, split among its ranks
REPLICATED, PARTITIONED, STREAMED = "replicated", "partitioned", "streamed"


def parse_size(text: str) -> int:
    """'1G', '512M', '1.5GiB', '2000000' -> bytes (K, M, G and T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"--max-memory {text}: not a size (for example 3G, 512M)")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * 1024 ** "_kmgt".index(unit)) if unit else int(number)
    if size < 1 << 20:
        raise ConfigError(f"--max-memory {text}: at least 1M")
    return size


def size_text(size: int) -> str:
    """'4.61 GiB', '312.5 MiB', '20.0 KiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{size / 2**10:.1f} KiB"


def available_memory() -> int:
    """Bytes of memory available to new work on this machine (MemAvailable), or all of it where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(max_memory: int | None, ranks_here: int) -> tuple[int, str]:
    """(bytes of level data each rank may hold, how that was set): ``max_memory`` per rank when given, else
    MEMORY_FRACTION of the available memory shared by the ``ranks_here`` ranks of this machine."""
    if max_memory is not None:
        return max_memory, f"--max-memory {size_text(max_memory)}"
    budget = int(available_memory() * MEMORY_FRACTION / max(ranks_here, 1))
    return budget, (f"{MEMORY_FRACTION:.0%} of the available memory ({size_text(available_memory())})"
                    + (f" shared by {ranks_here} ranks" if ranks_here > 1 else ""))


def choose_mode(everything: int, largest_share: int, world: int, budget: int) -> str:
    """How the data is held: every rank all of it when that fits, else each rank its share when that fits (several
    ranks), else streamed."""
    if everything <= budget:
        return REPLICATED
    if world > 1 and largest_share <= budget:
        return PARTITIONED
    return STREAMED


def partition(keys: list[str], frames: dict[str, int], world: int, seed: int) -> list[list[str]]:
    """``keys`` split among ``world`` ranks by video, balanced by frames: in a seeded order, each video to the
    rank with the fewest frames so far (ties: the lower rank). Every rank computes the same partition."""
    if world == 1:
        return [sorted(keys)]
    order = np.random.default_rng(seed).permutation(len(keys))
    order = sorted(order, key=lambda i: -frames[keys[i]])  # largest first (stable: seeded among equals)
    shares: list[list[str]] = [[] for _ in range(world)]
    totals = [0] * world
    for i in order:
        target = min(range(world), key=lambda r: (totals[r], r))
        shares[target].append(keys[i])
        totals[target] += frames[keys[i]]
    return [sorted(s) for s in shares]


def frame_sums(features: np.ndarray, rows: np.ndarray, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-dimension sum and sum of squares of ``features[rows]`` (frames, V, C) over frames and views, and
    their count, accumulated in float64 block by block."""
    width = features.shape[-1]
    total = np.zeros(width)
    squares = np.zeros(width)
    for start in range(0, len(rows), block):
        x = features[rows[start : start + block]].reshape(-1, width).astype(np.float64)
        total += x.sum(0)
        squares += (x * x).sum(0)
    return total, squares, len(rows) * features.shape[1]  # frames x views


_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}
FINITE_BLOCK = 1 << 18  # values checked at a time: the block and its masked copy stay in the core's cache


def all_finite(features: np.ndarray) -> bool:
    """Whether every value of a float16 or float32 array is finite: no exponent field is all ones (infinity
    and NaN), an integer test about 4x faster than ``np.isfinite(x).all()``. Block by block through one small
    buffer: a masked copy of a whole streamed window (hundreds of MiB of fresh pages, faulted in while torch's
    threads run) cost the reader of the 8 GB benchmark's epoch 8-11 s, mostly in the kernel; blocks, 0.3 s."""
    if features.dtype not in _EXPONENT or not features.flags.c_contiguous:
        return bool(np.isfinite(features).all())
    bits, mask = _EXPONENT[features.dtype]
    flat = features.reshape(-1).view(bits)
    buffer = np.empty(min(len(flat), FINITE_BLOCK), bits)
    for start in range(0, len(flat), FINITE_BLOCK):
        block = buffer[: min(FINITE_BLOCK, len(flat) - start)]
        np.bitwise_and(flat[start : start + FINITE_BLOCK], mask, out=block)
        if int(block.max()) == mask:
            return False
    return True
