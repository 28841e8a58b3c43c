"""What a cache holds for a split, beyond its identity: the split lists checked against the video table, the
fingerprint of the contents a run is pinned to, and what changed between two fingerprints. No h5py: fusion
compares the fingerprints that run records hold.

A fingerprint is plain JSON, ``{"split": n, "train": {key: state}, "test": {key: state}}``, one state per
key the split lists: ``"frames:label:digest"`` for an extracted video (``digest``: the stored digest of its
features, empty in caches written before digests existed), else why it is not there (``ABSENT``).
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from pipeline.cache.identity import canonical_json

PARTS = ("train", "test")
MISSING, FAILED, NOT_EXTRACTED = "missing on disk", "failed to decode", "not extracted"
ABSENT = (MISSING, FAILED, NOT_EXTRACTED)
FINGERPRINT = "fingerprint"  # the run record's field: {"cache": fingerprint, "flow_cache": fingerprint}
CACHE_VERSIONS = "cache_versions"  # the run record's field: {"cache": version name, ...}, for the record only


def absent_reason(key: str, missing: Iterable[str], failed: Iterable[str]) -> str:
    """Why a key a split lists has no features: missing on disk, failed to decode, or not extracted (yet)."""
    return MISSING if key in missing else FAILED if key in failed else NOT_EXTRACTED


def split_problems(splits: dict, known: set[str], missing: set[str], failed: set[str], *,
                   unaccounted: bool = True) -> list[str]:
    """One line per violation of the split lists ``{n: (train keys, test keys)}``: a key in both parts, a
    key listed twice, and (``unaccounted``) a key neither in the video table (``known``) nor listed as
    missing or failed."""
    problems = []
    for n, (train, test) in sorted(splits.items()):
        for key in sorted(set(train) & set(test)):
            problems.append(f"split {n}: {key!r} is in both train and test")
        for part, keys in zip(PARTS, (train, test)):
            problems += [f"split {n} {part}: {key!r} is listed {count} times"
                         for key, count in sorted(Counter(keys).items()) if count > 1]
            problems += [f"split {n} {part}: {key!r} is neither in the video table nor listed as missing or failed "
                         "(an unfinished extraction: rerun the same `mrrn extract`)"
                         for key in dict.fromkeys(keys) if unaccounted and key not in known | missing | failed]
    return problems


def fingerprint(cache, split: int) -> dict:
    """The contents of ``cache`` (a ``FeatureCache``) that a run on ``split`` uses: every key of the split
    lists with its frames, label and feature digest, or why it has none. Reads no features."""
    rows = {rec.key: f"{rec.frames}:{rec.label}:{digest}" for rec, digest in zip(cache.videos, cache.digests)}
    missing, failed = set(cache.missing), {f.key for f in cache.failed}
    train, test = cache.splits[split]
    return {"split": split, **{part: {k: rows.get(k) or absent_reason(k, missing, failed) for k in keys}
                               for part, keys in zip(PARTS, (train, test))}}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _extracted(fp: dict) -> dict[str, tuple[str, list[str]]]:
    """key -> (part, [frames, label, digest]) of the videos with features."""
    return {k: (part, state.split(":")) for part in PARTS for k, state in fp.get(part, {}).items() if state not in ABSENT}


def changes(old: dict, new: dict) -> str:
    """What differs between two fingerprints, as a phrase ('3 videos added, 1 test video moved to train');
    empty when they agree."""
    if old == new:
        return ""
    before, after = _extracted(old), _extracted(new)
    both = sorted(before.keys() & after.keys())
    said = []
    if old.get("split") != new.get("split"):
        said.append(f"split {old.get('split')} is now split {new.get('split')}")
    if len(after.keys() - before.keys()):
        said.append(f"{_plural(len(after.keys() - before.keys()), 'video')} added")
    if len(before.keys() - after.keys()):
        said.append(f"{_plural(len(before.keys() - after.keys()), 'video')} removed")
    for a, b in (("test", "train"), ("train", "test")):
        moved = sum(before[k][0] == a and after[k][0] == b for k in both)
        if moved:
            said.append(f"{_plural(moved, f'{a} video')} moved to {b}")
    relabelled = sum(before[k][1][1] != after[k][1][1] for k in both)
    if relabelled:
        said.append(f"labels of {_plural(relabelled, 'video')} changed")
    redone = sum(before[k][1][0] != after[k][1][0] or (before[k][1][2] and after[k][1][2] and before[k][1][2] != after[k][1][2])
                 for k in both)
    if redone:
        said.append(f"features of {_plural(redone, 'video')} re-extracted")
    return ", ".join(said) or "the split lists changed"


def conflict(runs: list[tuple[str, dict]]) -> str | None:
    """The first two of ``runs`` (name, run record) that read one cache (the same identity) with different
    contents, as one line; None when every pair agrees. Records without a fingerprint (older runs) pass."""
    seen: dict[str, tuple[str, dict]] = {}
    for name, record in runs:
        pinned = record.get(FINGERPRINT)
        for field, fp in (pinned.items() if isinstance(pinned, dict) else ()):
            if field not in record or not isinstance(fp, dict):
                continue
            identity = canonical_json(record[field])
            if identity not in seen:
                seen[identity] = (name, fp)
                continue
            first, first_fp = seen[identity]
            what = changes(first_fp, fp)
            if what:
                return f"{first} and {name} were trained on different contents of the same cache (for {name}: {what})"
    return None
