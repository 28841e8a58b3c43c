"""What `mrrn inspect` says about a cache: how it was made, what it holds, and what waits to be merged."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.cache.contents import absent_reason
from pipeline.cache.reader import CacheError, FeatureCache, journal_dir, lock_path, shard_dir
from pipeline.cache.journal import pending_entries
from pipeline.locks import is_held


@dataclass
class CacheReport:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # from --verify


def inspect_cache(path: Path, verify: bool = False) -> CacheReport:
    """The report of the cache at ``path``; refused in one line when there is no readable cache yet."""
    shards = sorted(shard_dir(path).glob("*.h5"))
    unjoined = (f"{len(shards)} shard(s) of a multi-process extraction in {shard_dir(path)} "
                "not yet joined; rerun the same `mrrn extract` to finish and join them")
    running = is_held(lock_path(path)) or any(is_held(lock) for lock in shard_dir(path).glob("*.lock"))
    if running and not path.is_file():
        raise CacheError(f"{path}: no cache yet; an extraction is running (its lock is held): its finished videos "
                         "are in the cache when it ends")
    if shards and not path.exists():
        raise CacheError(f"{path}: no cache yet; {unjoined}")
    report = CacheReport()
    with FeatureCache(path) as c:
        attrs = c.attrs
        report.lines.append(f"cache       {path} ({_size(path, c)}, schema {attrs['schema_version']}, "
                            f"mrrn {attrs['mrrn_version']}, version {c.version}, updated {attrs['updated_utc']})")
        unused = c.level_rows - c.total_frames
        if unused:
            report.lines.append(f"unused      {unused} rows of re-extracted videos stay in their parts until `mrrn compact`")
        report.lines += c.identity.describe()
        report.lines.append(f"videos      {len(c.videos)} ok, {len(c.failed)} failed, {c.total_frames} frames")
        views = len(c.identity.views)
        for spec in c.identity.levels:
            if spec.name not in c.stored_levels():
                report.lines.append(f"level       {spec.name:<4} {spec.tap}: missing; `mrrn extract ... --redo-damaged` "
                                    "extracts it again")
                continue
            shape = c.level_shape(spec.name)
            size = shape[0] * shape[1] * np.dtype(c.identity.dtype).itemsize / 2**20
            per_view = f" = {views} views x {spec.width}" if views > 1 else ""
            report.lines.append(f"level       {spec.name:<4} {spec.tap}: {shape}{per_view} {c.identity.dtype}, "
                                f"{size:.1f} MiB in memory")
        for n, (train, test) in sorted(c.splits.items()):
            report.lines.append(f"split       {n}: {_part(c, train, 'train')}, {_part(c, test, 'test')}")
        report.lines += [f"failed      {f.key}: {f.reason}" for f in c.failed]
        pending, damaged = pending_entries(path)
        if running:
            report.lines.append(f"running     an extraction is writing this cache now (its lock is held): {pending} "
                                f"finished video(s) in {journal_dir(path)}, merged into the cache when it ends")
        elif pending:
            report.lines.append(f"pending     {pending} finished video(s) in {journal_dir(path)} not yet merged; "
                                "rerun the same `mrrn extract` to merge them")
        if damaged:
            report.lines.append(f"damaged     {damaged} journal entr{'y' if damaged == 1 else 'ies'} in {journal_dir(path)} "
                                "cannot be read; the next `mrrn extract` sets them aside and extracts their videos again")
        if shards and not running:
            report.lines.append(f"pending     {unjoined}")
        if verify:
            report.problems = c.verify()
    return report


def _size(path: Path, cache: FeatureCache) -> str:
    """'812.4 MiB' for one file; '812.4 MiB in 12 parts in FILE.h5.parts/' for an index over parts."""
    if not cache.parts:
        return f"{path.stat().st_size / 2**20:.1f} MiB"
    size = path.stat().st_size + sum(part.size for part in cache.parts)
    folders = sorted({str(Path(part.name).parent) for part in cache.parts})
    return f"{size / 2**20:.1f} MiB in {len(cache.parts)} part(s) in {', '.join(f + '/' for f in folders)}"


def _part(cache: FeatureCache, keys: tuple[str, ...], name: str) -> str:
    """'32 test', or '31 of 32 test (1 missing on disk)' when some of the keys have no features."""
    failed = {f.key for f in cache.failed}
    absent = Counter(absent_reason(k, cache.missing, failed) for k in keys if k not in cache.index)
    if not absent:
        return f"{len(keys)} {name}"
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(absent.items()))
    return f"{len(keys) - sum(absent.values())} of {len(keys)} {name} ({why})"
