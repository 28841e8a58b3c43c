"""Stage 2's data: one level of a cache read once into memory, the split's clips as index arrays into it,
and the two-stream join of an RGB and a flow cache.

The level is read with one HDF5 read, on the GPU when it fits; clips are rows of index arrays into
it, so a training batch is a single gather, with no per-batch I/O.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.cache.contents import absent_reason
from pipeline.cache.reader import FeatureCache
from pipeline.evaluate.scores import Coverage
from pipeline.train.clips import clip_frames, gather_clips
from pipeline.config import TrainConfig
from pipeline.datasets.index import hash_split
from pipeline.errors import TrainError
from pipeline.cache.identity import STREAM_FIELDS, CacheIdentity


@dataclass
class LevelTable:
    """One level in memory with its video table: a cache's, or RGB | flow side by side (twostream)."""

    features: np.ndarray  # (frames, V * C): the views side by side, view-major (V = 1 unless --views)
    videos: dict[str, tuple[int, int, int]]  # key -> (first row, frames, label)
    classes: tuple[str, ...]
    identity: CacheIdentity
    split: tuple[tuple[str, ...], tuple[str, ...]]  # (train keys, test keys)
    name: str  # what a message calls it: the cache path, or both
    missing: frozenset[str] = frozenset()  # keys the split files name that were not on disk
    failed: frozenset[str] = frozenset()  # keys that failed to decode


@dataclass
class ClipSet:
    """One part of a split (train, test or validation) as index arrays into the level's feature matrix."""

    keys: list[str]  # (videos,)
    labels: torch.Tensor  # (videos,) int64
    clip_rows: torch.Tensor  # (clips, L) int64 rows of the feature matrix
    clip_video: torch.Tensor  # (clips,) int64 index into keys

    @property
    def num_clips(self) -> int:
        return len(self.clip_video)


@dataclass
class LevelData:
    features: torch.Tensor  # (frames, V, C), float16 or float32, on the training device; view 0 the centre crop
    train: ClipSet
    test: ClipSet
    val: ClipSet | None  # held out of the training videos (--val-fraction), else None
    classes: tuple[str, ...]
    cache_identity: CacheIdentity
    mean: torch.Tensor | None  # (C,) per-dimension mean of the training videos' frames; with --normalize only
    std: torch.Tensor | None  # (C,)
    listed: dict[str, int] = field(default_factory=dict)  # part -> videos the split lists (train, test)

    @property
    def coverage(self) -> Coverage:
        """What the test numbers are computed on: the test videos scored of those the split lists."""
        return Coverage.of(self.test.labels.cpu().numpy(), self.listed.get("test", len(self.test.keys)), len(self.classes))


def read_level_table(path: str, modality: str, cfg: TrainConfig) -> LevelTable:
    """``cfg.level`` of the cache at ``path`` (one read), refusing another modality or a missing split."""
    with FeatureCache(path) as cache:
        have = cache.identity.modality
        if have != modality:
            wanted = "--flow-cache" if cfg.model == "twostream" and modality == "flow" else f"--modality {modality}"
            raise TrainError(f"{path}: a {have} cache, but this run asks for {wanted}")
        problems = cache.table_problems()
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise TrainError(f"{path}: damaged cache ({problems[0]}{more}); run `mrrn inspect {path} --verify`, "
                             "then extract the videos it names again (`mrrn extract ... --redo KEY`)")
        if cfg.split not in cache.splits:
            known = ", ".join(str(n) for n in sorted(cache.splits)) or "none"
            raise TrainError(f"{path}: no split {cfg.split} in this cache (it has: {known})")
        broken = cache.split_problems(unaccounted=False)  # a key of this split with no features: _split_parts
        if broken:
            more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
            raise TrainError(f"{path}: damaged split lists ({broken[0]}{more}); run the same `mrrn extract` again "
                             "to write them from the split files")
        return LevelTable(
            features=cache.load_level(cfg.level),  # raises if the cache has no such level
            videos={r.key: (r.offset, r.frames, r.label) for r in cache.videos},
            classes=cache.classes, identity=cache.identity, split=cache.splits[cfg.split], name=str(path),
            missing=frozenset(cache.missing), failed=frozenset(f.key for f in cache.failed),
        )


def stack_streams(rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor):
    """One video's RGB (T, C) and flow (T', C) features side by side, (n, 2C). Flow image i is the motion
    from frame i to frame i+1, so it sits beside RGB frame i+1: n = min(T - 1, T') (the first RGB frame
    has no motion before it; T' = T - 1 when both caches decoded the same frames)."""
    n = max(min(len(rgb) - 1, len(flow)), 0)
    if isinstance(rgb, torch.Tensor):
        return torch.cat([rgb[1 : 1 + n], flow[:n]], dim=1)
    return np.concatenate([rgb[1 : 1 + n], flow[:n]], axis=1)


def join_streams(rgb: LevelTable, flow: LevelTable) -> LevelTable:
    """RGB | flow features side by side (:func:`stack_streams`) for the videos in both caches."""
    if len(rgb.identity.views) > 1:
        raise TrainError(f"{rgb.name}: --model twostream reads centre-only caches; this one holds "
                         f"{len(rgb.identity.views)} views of each frame (extract with --views center)")
    differing = rgb.identity.differing_fields(flow.identity, ignore=STREAM_FIELDS)
    if differing:
        raise TrainError(f"{rgb.name} and {flow.name} are not two streams of one dataset and backbone "
                         f"(they differ in: {', '.join(differing)})")
    if rgb.split != flow.split:
        raise TrainError(f"{rgb.name} and {flow.name} hold different video lists for this split")
    pieces, videos, offset = [], {}, 0
    for key, (rgb_at, rgb_frames, label) in rgb.videos.items():
        if key not in flow.videos:
            continue
        flow_at, flow_frames, _ = flow.videos[key]
        both = stack_streams(rgb.features[rgb_at : rgb_at + rgb_frames], flow.features[flow_at : flow_at + flow_frames])
        if len(both):
            pieces.append(both)
            videos[key] = (offset, len(both), label)
            offset += len(both)
    width = rgb.features.shape[1] + flow.features.shape[1]
    features = np.concatenate(pieces) if pieces else np.zeros((0, width), rgb.features.dtype)
    return LevelTable(features, videos, rgb.classes, rgb.identity, rgb.split, f"{rgb.name} + {flow.name}",
                      rgb.missing | flow.missing, rgb.failed | flow.failed)


def _clip_set(table: LevelTable, keys: list[str], cfg: TrainConfig, device: torch.device) -> ClipSet:
    rows, owner = [], []
    for i, key in enumerate(keys):
        offset, frames, _ = table.videos[key]
        clips = clip_frames(frames, cfg.clip) + offset  # (n, L)
        rows.append(clips)
        owner.append(np.full(len(clips), i))
    return ClipSet(
        keys=list(keys),
        labels=torch.tensor([table.videos[k][2] for k in keys], dtype=torch.int64, device=device),
        clip_rows=torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, cfg.clip.length), np.int64)).to(device),
        clip_video=torch.from_numpy(np.concatenate(owner) if owner else np.zeros(0, np.int64)).to(device),
    )


def _statistics(features: np.ndarray, rows: np.ndarray, block: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of ``features[rows]`` (frames, V, C) over frames and views,
    accumulated in float64 block by block."""
    width = features.shape[-1]
    total = np.zeros(width)
    squares = np.zeros(width)
    for start in range(0, len(rows), block):
        x = features[rows[start : start + block]].reshape(-1, width).astype(np.float64)
        total += x.sum(0)
        squares += (x * x).sum(0)
    count = len(rows) * features.shape[1]  # frames x views
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def _place(features: np.ndarray, device: torch.device, log) -> torch.Tensor:
    tensor = torch.from_numpy(features)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if tensor.nbytes < free // 2:
            return tensor.to(device)
        log(f"note: the level ({tensor.nbytes / 2**30:.1f} GiB) stays in CPU memory; batches are copied to the GPU")
    return tensor


def _split_parts(table: LevelTable, cfg: TrainConfig, log) -> dict[str, list[str]]:
    """The split's train and test keys present in the table (refusing missing ones unless allowed), and
    the validation videos held out of the training ones (--val-fraction)."""
    where = "both caches" if cfg.model == "twostream" else "the cache"
    parts = {}
    for name, keys in zip(("train", "test"), table.split):
        present = [k for k in keys if k in table.videos]
        missing = [k for k in keys if k not in table.videos]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            why = Counter(absent_reason(k, table.missing, table.failed) for k in missing)
            message = (f"{table.name}: {len(missing)} of the {len(keys)} {name} videos of split {cfg.split} "
                       f"are not in {where} ({', '.join(f'{n} {r}' for r, n in sorted(why.items()))}): {shown}")
            if not cfg.allow_missing:
                raise TrainError(message + "; --allow-missing trains without them")
            log(f"warning: {message}; going on without them (--allow-missing)")
        if not present:
            raise TrainError(f"{table.name}: split {cfg.split} has no {name} videos in {where}")
        parts[name] = present
    if cfg.val_fraction > 0:
        parts["train"], parts["val"] = _hold_out(table, parts["train"], cfg)
    return parts


def _hold_out(table: LevelTable, train: list[str], cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(training keys kept, validation keys) of --val-fraction: only classes with two or more training
    videos give any (a class's only video stays in training); a part left empty is refused in one line."""
    labels = [table.videos[k][2] for k in train]
    counts = np.bincount(labels, minlength=len(table.classes)) if labels else np.zeros(0, np.int64)
    _, held = hash_split([(k, lab) for k, lab in zip(train, labels) if counts[lab] >= 2], cfg.val_fraction)
    held_keys = {k for k, _ in held}
    kept_keys = [k for k in train if k not in held_keys]
    if not held_keys or not kept_keys:
        empty = "validation" if not held_keys else "training"
        raise TrainError(f"--val-fraction {cfg.val_fraction:g}: leaves no {empty} videos in split {cfg.split} "
                         f"({len(train)} training videos; a class's only video is never held out); "
                         "use another fraction, or 0 for no validation")
    return sorted(kept_keys), sorted(held_keys)


def load_level_data(cfg: TrainConfig, device: torch.device, log=print) -> LevelData:
    """Read ``cfg.level`` of the cache (and, for twostream, of the flow cache) once and index the split's
    train, test and validation clips."""
    table = read_level_table(cfg.cache, cfg.modality, cfg)
    if cfg.model == "twostream":
        table = join_streams(table, read_level_table(cfg.flow_cache, "flow", cfg))
    parts = _split_parts(table, cfg, log)
    features = table.features.reshape(len(table.features), len(table.identity.views), -1)  # (frames, V, C)
    spans = {k: table.videos[k][:2] for keys in parts.values() for k in keys}  # key -> (first row, frames)
    bad = [k for k, (at, n) in spans.items() if not np.isfinite(features[at : at + n]).all()]
    if bad:
        raise TrainError(f"{table.name}: level {cfg.level} has non-finite features in {len(bad)} video(s): "
                         f"{', '.join(bad[:3])}; extract them again with `mrrn extract ... --redo-damaged`")
    mean = std = None
    if cfg.normalize:  # a pass over every training frame: only when the statistics are used
        train_rows = np.concatenate([np.arange(at, at + n) for at, n in (spans[k] for k in parts["train"])])
        seen = features if cfg.train_views == "random" else features[:, :1]  # the views training reads
        mean, std = _statistics(seen, train_rows)
    return LevelData(
        mean=mean, std=std,
        features=_place(features, device, log),
        train=_clip_set(table, parts["train"], cfg, device),
        test=_clip_set(table, parts["test"], cfg, device),
        val=_clip_set(table, parts["val"], cfg, device) if parts.get("val") else None,
        classes=table.classes,
        cache_identity=table.identity,
        listed={name: len(keys) for name, keys in zip(("train", "test"), table.split)},
    )


def make_batch(features: torch.Tensor, clips: ClipSet, idx: torch.Tensor, device: torch.device,
               view: int | torch.Tensor = 0):
    """Clips ``idx`` of ``clips`` as model input (B, L, C) float32 on ``device``, with their labels (B,).
    ``features`` (frames, V, C); ``view``: one view for every clip (0, the centre crop, by default), or
    each clip's own (B,), the same for all of a clip's frames."""
    x = gather_clips(features, clips.clip_rows[idx], view, device)  # (B, L, C)
    y = clips.labels[clips.clip_video[idx]]  # (B,)
    return x, y
