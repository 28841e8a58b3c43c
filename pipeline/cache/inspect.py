"""What `mrrn inspect` says about a cache: how it was made, what it holds, and what waits to be merged."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.cache.reader import CacheError, FeatureCache, journal_dir, shard_dir
from pipeline.cache.journal import pending_entries


@dataclass
class CacheReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # from --verify


def inspect_cache(path: Path, verify: bool = False) -> CacheReport:
    """The report of the cache at ``path``; refused in one line when there is no readable cache yet."""
    shards = sorted(shard_dir(path).glob("*.h5"))
    unjoined = (f"{len(shards)} shard(s) of a multi-process extraction in {shard_dir(path)} "
                "not yet joined; rerun the same `mrrn extract` to finish and join them")
    if shards and not path.exists():
        raise CacheError(f"{path}: no cache yet; {unjoined}")
    report = CacheReport()
    with FeatureCache(path) as c:
        attrs = c.attrs
        report.lines.append(f"cache       {path} ({path.stat().st_size / 2**20:.1f} MiB, schema {attrs['schema_version']}, "
                            f"mrrn {attrs['mrrn_version']}, updated {attrs['updated_utc']})")
        report.lines += c.identity.describe()
        report.lines.append(f"videos      {len(c.videos)} ok, {len(c.failed)} failed, {c.total_frames} frames")
        views = len(c.identity.views)
        for spec in c.identity.levels:
            shape = c.level_shape(spec.name)
            size = shape[0] * shape[1] * np.dtype(c.identity.dtype).itemsize / 2**20
            per_view = f" = {views} views x {spec.width}" if views > 1 else ""
            report.lines.append(f"level       {spec.name:<4} {spec.tap}: {shape}{per_view} {c.identity.dtype}, "
                                f"{size:.1f} MiB in memory")
        for n, (train, test) in sorted(c.splits.items()):
            report.lines.append(f"split       {n}: {len(train)} train, {len(test)} test")
        report.lines += [f"failed      {f.key}: {f.reason}" for f in c.failed]
        pending, damaged = pending_entries(path)
        if pending:
            report.lines.append(f"pending     {pending} finished video(s) in {journal_dir(path)} not yet merged; "
                                "rerun the same `mrrn extract` to merge them")
        if damaged:
            report.lines.append(f"damaged     {damaged} journal entr{'y' if damaged == 1 else 'ies'} in {journal_dir(path)} "
                                "cannot be read; the next `mrrn extract` sets them aside and extracts their videos again")
        if shards:
            report.lines.append(f"pending     {unjoined}")
        if verify:
            report.problems = c.verify()
    return report
