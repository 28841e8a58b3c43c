"""Stage 2's data: the split's videos of one level read once into memory, the clips as index arrays into
them, and the two-stream join of an RGB and a flow cache.

The videos are read in few large reads, on the GPU when they fit; clips are rows of index arrays into them,
so a training batch is a single gather, with no per-batch I/O. Over the memory budget (``--max-memory``),
each rank holds only its share, or streams it (``shares.py``).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from pipeline import distributed
from pipeline.cache.contents import absent_reason
from pipeline.cache.reader import FeatureCache
from pipeline.evaluate.scores import Coverage
from pipeline.train.clips import clip_frames, gather_clips
from pipeline.train.streaming import release_freed_memory
from pipeline.train.two_streams import in_both, join_streams
from pipeline.train.shares import (
    PARTITIONED,
    REPLICATED,
    STREAMED,
    all_finite,
    choose_mode,
    frame_sums,
    memory_budget,
    partition,
    size_text,
)
from pipeline.config import TrainConfig
from pipeline.datasets.index import hash_split
from pipeline.errors import TrainError
from pipeline.cache.identity import CacheIdentity


@dataclass
class LevelTable:
    """One level in memory with its video table: a cache's, or RGB | flow side by side (twostream)."""

    features: np.ndarray | None  # (frames, V * C): the views side by side, view-major (V = 1 unless --views); None until read
    videos: dict[str, tuple[int, int, int]]  # key -> (first row, frames, label)
    classes: tuple[str, ...]
    identity: CacheIdentity
    split: tuple[tuple[str, ...], tuple[str, ...]]  # (train keys, test keys)
    name: str  # what a message calls it: the cache path, or both
    missing: frozenset[str] = frozenset()  # keys the split files name that were not on disk
    failed: frozenset[str] = frozenset()  # keys that failed to decode
    path: str = ""  # the cache the rows are read from
    level: str = ""
    width: int = 0  # columns per frame: V * C

    def with_rows(self, keys: list[str]) -> LevelTable:
        """This table holding the rows of ``keys`` only, packed in storage order (few large reads)."""
        keys = sorted(keys, key=lambda k: self.videos[k][0])
        with FeatureCache(self.path) as cache:
            features, packed = cache.read_videos(self.level, [self.videos[k][:2] for k in keys])
        return replace(self, features=features, videos={k: (at, *self.videos[k][1:]) for k, at in zip(keys, packed)})


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
    features: torch.Tensor | None  # (frames, V, C), float16 or float32, on the training device; view 0 the centre
    # crop. None when each rank holds its share: then ``shares`` holds it, and test and val list every rank's
    # videos (keys, labels) but no clips
    train: ClipSet
    test: ClipSet
    val: ClipSet | None  # held out of the training videos (--val-fraction), else None
    classes: tuple[str, ...]
    cache_identity: CacheIdentity
    mean: torch.Tensor | None  # (C,) per-dimension mean of the training videos' frames; with --normalize only
    std: torch.Tensor | None  # (C,)
    listed: dict[str, int] = field(default_factory=dict)  # part -> videos the split lists (train, test)
    width: int = 0  # C: the model's input width
    mode: str = REPLICATED  # how the data is held (shares.py)
    shares: dict = field(default_factory=dict)  # part -> this rank's share (HeldPart or StreamedPart) unless replicated

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
        cache.level_shape(cfg.level)  # refuses a cache without such a level
        return LevelTable(
            features=None, videos={r.key: (r.offset, r.frames, r.label) for r in cache.videos},
            classes=cache.classes, identity=cache.identity, split=cache.splits[cfg.split], name=str(path),
            missing=frozenset(cache.missing), failed=frozenset(f.key for f in cache.failed), path=str(path),
            level=cfg.level, width=cache.levels[cfg.level],
        )


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


def mean_std(total: np.ndarray, squares: np.ndarray, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def place_on(features: np.ndarray, device: torch.device, log) -> torch.Tensor:
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


_LAST: list = []  # [(data key, LevelData)]: the last data read, which a sweep's next run of the same data reuses


def _data_key(cfg: TrainConfig, device: torch.device) -> tuple:
    """What the data of a run depends on: the caches as they are on disk, and the settings that choose and
    index the videos (not the model's). The training views matter only to --normalize's statistics."""
    files = tuple((str(p), os.stat(p).st_ino, os.stat(p).st_mtime_ns, os.stat(p).st_size)
                  for p in (cfg.cache, cfg.flow_cache) if p is not None)
    return (files, cfg.split, cfg.level, cfg.modality, cfg.model == "twostream", cfg.clip, cfg.val_fraction,
            cfg.normalize, cfg.train_views if cfg.normalize else None, cfg.allow_missing, cfg.max_memory, cfg.seed, str(device),
            distributed.current())


def load_level_data(cfg: TrainConfig, device: torch.device, log=print) -> LevelData:
    """Read the split's videos of ``cfg.level`` (and, for twostream, of the flow cache) once, as much of them as
    the memory budget lets each rank hold (``shares.py``), and index the train, test and validation clips.
    Data held in memory is kept for the next call with the same data (a sweep reads each level once)."""
    key = _data_key(cfg, device)
    if _LAST and _LAST[0][0] == key:
        return _LAST[0][1]
    _LAST.clear()  # the previous data goes before the next is read
    data = _load(cfg, device, log)
    if data.mode != STREAMED:
        _LAST.append((key, data))
    return data


def _load(cfg: TrainConfig, device: torch.device, log) -> LevelData:
    table = read_level_table(cfg.cache, cfg.modality, cfg)
    flow = read_level_table(cfg.flow_cache, "flow", cfg) if cfg.model == "twostream" else None
    present = in_both(table, flow) if flow is not None else table
    parts = _split_parts(present, cfg, log)
    mode, mine, budget = _plan(present, parts, cfg, log)
    if mode == REPLICATED:
        return _in_memory(read_rows(table, flow, sorted({k for keys in parts.values() for k in keys})), parts, cfg, device, log)
    from pipeline.train.share_data import by_share

    return by_share(table, flow, parts, mine, mode=mode, budget=budget, cfg=cfg, device=device, log=log)


def read_rows(table: LevelTable, flow: LevelTable | None, keys: list[str]) -> LevelTable:
    """The rows of ``keys`` of ``table`` (joined with ``flow``'s for twostream)."""
    loaded = table.with_rows(keys)
    loaded = join_streams(loaded, flow.with_rows(keys)) if flow is not None else loaded
    release_freed_memory()  # the read's buffers
    return loaded


def _plan(present: LevelTable, parts: dict[str, list[str]], cfg: TrainConfig, log):
    """(how the data is held, this rank's keys of each part, the budget in bytes): everything on every rank
    when it fits the budget (``--max-memory``), else each rank its share, else streamed."""
    rank = distributed.current()
    frames = {k: present.videos[k][1] for keys in parts.values() for k in keys}
    row_bytes = present.width * np.dtype(present.identity.dtype).itemsize
    shares = {name: partition(keys, frames, rank.world, cfg.seed) for name, keys in parts.items()}
    everything = sum(frames.values()) * row_bytes
    largest = max(sum(frames[k] for s in shares.values() for k in s[r]) for r in range(rank.world)) * row_bytes
    budget, how = memory_budget(cfg.max_memory, distributed.ranks_here())
    mode = choose_mode(everything, largest, rank.world, budget)
    if mode != REPLICATED and not all(shares["train"]):
        raise TrainError(f"{present.name}: {len(parts['train'])} training videos for {rank.world} ranks: each rank "
                         "needs one of its own when they are shared out; use fewer ranks, or a larger --max-memory")
    if mode == STREAMED and cfg.model == "twostream":
        raise TrainError(f"{present.name}: --model twostream holds its share of both levels in memory: "
                         f"{size_text(largest)} a rank, more than the memory budget ({how}); raise --max-memory, or "
                         "train on more ranks (--nproc)")
    if mode != REPLICATED and rank.is_main:
        held = (f"each of the {rank.world} ranks holds its share (at most {size_text(largest)})" if mode == PARTITIONED
                else f"{'each rank streams its share' if rank.distributed else 'it is streamed'} from the cache, "
                     "a few groups of videos at a time")
        log(f"note: the split's videos of level {cfg.level} take {size_text(everything)}, more than the memory "
            f"budget ({how}): {held} (docs/training.md, \"Memory\")")
    return mode, {name: s[rank.rank] for name, s in shares.items()}, budget


def _in_memory(table: LevelTable, parts: dict[str, list[str]], cfg: TrainConfig, device: torch.device, log) -> LevelData:
    """Every video the run uses on every rank (the replicated mode): one feature matrix and the clips into it."""
    features = table.features.reshape(len(table.features), len(table.identity.views), -1)  # (frames, V, C)
    spans = {k: table.videos[k][:2] for keys in parts.values() for k in keys}  # key -> (first row, frames)
    require_finite(table, features, spans, cfg.level)
    mean = std = None
    if cfg.normalize:  # a pass over every training frame: only when the statistics are used
        train_rows = np.concatenate([np.arange(at, at + n) for at, n in (spans[k] for k in parts["train"])])
        seen = features if cfg.train_views == "random" else features[:, :1]  # the views training reads
        mean, std = mean_std(*frame_sums(seen, train_rows))
    return LevelData(
        mean=mean, std=std,
        features=place_on(features, device, log),
        train=_clip_set(table, parts["train"], cfg, device),
        test=_clip_set(table, parts["test"], cfg, device),
        val=_clip_set(table, parts["val"], cfg, device) if parts.get("val") else None,
        classes=table.classes,
        cache_identity=table.identity,
        listed={name: len(keys) for name, keys in zip(("train", "test"), table.split)},
        width=features.shape[-1],
    )


def require_finite(table: LevelTable, features: np.ndarray, spans: dict[str, tuple[int, int]], level: str) -> None:
    bad = [k for k, (at, n) in spans.items() if not all_finite(features[at : at + n])]
    if bad:
        raise TrainError(f"{table.name}: level {level} has non-finite features in {len(bad)} video(s): "
                         f"{', '.join(bad[:3])}; extract them again with `mrrn extract ... --redo-damaged`")


def make_batch(features: torch.Tensor, clips: ClipSet, idx: torch.Tensor, device: torch.device,
               view: int | torch.Tensor = 0):
    """Clips ``idx`` of ``clips`` as model input (B, L, C) float32 on ``device``, with their labels (B,).
    ``features`` (frames, V, C); ``view``: one view for every clip (0, the centre crop, by default), or
    each clip's own (B,), the same for all of a clip's frames."""
    x = gather_clips(features, clips.clip_rows[idx], view, device)  # (B, L, C)
    y = clips.labels[clips.clip_video[idx]]  # (B,)
    return x, y
