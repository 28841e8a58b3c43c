"""A rank's share of the split's videos, when every rank's copy of them would not fit its memory budget
(``shares.py``): held in memory (partitioned), or streamed from the cache (``streaming.py``). The test and
validation parts list every rank's videos (their keys and labels), so that the ranks' scores add up to
every video's; their clips are this rank's only."""
from __future__ import annotations

import numpy as np
import torch

from pipeline import distributed
from pipeline.config import TrainConfig
from pipeline.train.clips import clip_frames
from pipeline.train.level_data import (
    ClipSet,
    LevelData,
    LevelTable,
    mean_std,
    place_on,
    read_rows,
    require_finite,
)
from pipeline.train.share_epochs import HeldPart
from pipeline.train.shares import PARTITIONED, frame_sums
from pipeline.train.streaming import SHUFFLE_GROUPS, StreamedPart, Window, statistics

EVAL_GROUP_BYTES = 64 << 20  # a partitioned rank's evaluation reads its videos this much at a time


def by_share(table: LevelTable, flow: LevelTable | None, parts: dict[str, list[str]], mine: dict[str, list[str]], *,
             mode: str, budget: int, cfg: TrainConfig, device: torch.device, log) -> LevelData:
    """The LevelData of this rank's share ``mine`` of each part of ``parts``, held (``PARTITIONED``) or streamed."""
    views = len(table.identity.views)
    row_bytes = table.width * np.dtype(table.identity.dtype).itemsize

    def streamed(name: str, group_bytes: int) -> StreamedPart:
        return StreamedPart(table.path, table.level, table.videos, mine[name], all_keys=parts[name], clip=cfg.clip,
                            views=views, group_bytes=max(1, group_bytes), row_bytes=row_bytes)

    if mode == PARTITIONED:  # the training share held; evaluation reads its share group by group, unless twostream
        held = list(parts) if flow is not None else ["train"]
        shares, sums = _held(read_rows(table, flow, sorted({k for name in held for k in mine[name]})), parts,
                             {name: mine[name] for name in held}, cfg, device, log)
        shares.update({name: streamed(name, EVAL_GROUP_BYTES) for name in parts if name not in shares})
        width = shares["train"].window.features.shape[-1]
    else:  # a window in use, one queued, one being read, each SHUFFLE_GROUPS groups
        shares = {name: streamed(name, budget // (3 * SHUFFLE_GROUPS + 1)) for name in parts}
        width = table.width // views
        sums = statistics(shares["train"], cfg.train_views == "random", width) if cfg.normalize else None
    mean = std = None
    if sums is not None:  # the statistics of every rank's training frames
        mean, std = mean_std(*_added_up(sums, device))
    labels = {name: [table.videos[k][2] for k in keys] for name, keys in parts.items()}
    sets = {name: _listed(keys, labels[name], device, cfg.clip.length) for name, keys in parts.items()}
    return LevelData(features=None, train=sets["train"], test=sets["test"], val=sets.get("val"), classes=table.classes,
                     cache_identity=table.identity, mean=mean, std=std, width=width, mode=mode, shares=shares,
                     listed={name: len(keys) for name, keys in zip(("train", "test"), table.split)})


def _listed(keys: list[str], labels: list[int], device: torch.device, length: int) -> ClipSet:
    """A part's videos on every rank (keys, labels), its clips with the shares."""
    return ClipSet(keys=list(keys), labels=torch.tensor(labels, dtype=torch.int64, device=device),
                   clip_rows=torch.zeros((0, length), dtype=torch.int64), clip_video=torch.zeros(0, dtype=torch.int64))


def _held(loaded: LevelTable, parts: dict[str, list[str]], mine: dict[str, list[str]], cfg: TrainConfig,
          device: torch.device, log):
    """This rank's share of the parts in ``mine`` in memory: one feature matrix, and a window of clips per part."""
    features = loaded.features.reshape(len(loaded.features), len(loaded.identity.views), -1)  # (frames, V, C)
    spans = {k: loaded.videos[k][:2] for k in loaded.videos}
    require_finite(loaded, features, spans, cfg.level)
    sums = None
    if cfg.normalize:
        rows = [np.arange(at, at + n) for at, n in (spans[k] for k in mine["train"])]
        seen = features if cfg.train_views == "random" else features[:, :1]
        sums = frame_sums(seen, np.concatenate(rows) if rows else np.zeros(0, np.int64))
    placed = place_on(features, device, log)
    shares = {}
    for name in mine:
        keys = parts[name]
        index = {k: i for i, k in enumerate(keys)}
        clips = [clip_frames(spans[k][1], cfg.clip) + spans[k][0] for k in mine[name]]  # (n, L) rows of features
        owner = [np.full(len(c), index[k]) for k, c in zip(mine[name], clips)]
        shares[name] = HeldPart(Window(
            features=placed,
            clip_rows=torch.from_numpy(np.concatenate(clips) if clips else np.zeros((0, cfg.clip.length), np.int64)).to(placed.device),
            clip_video=torch.from_numpy(np.concatenate(owner) if owner else np.zeros(0, np.int64)).to(placed.device)))
    return shares, sums


def _added_up(sums: tuple[np.ndarray, np.ndarray, int], device: torch.device) -> tuple[np.ndarray, np.ndarray, int]:
    """(sum, squares, count) added up over the ranks."""
    total, squares, count = sums
    packed = torch.from_numpy(np.concatenate([total, squares, [count]]))  # float64
    if device.type == "cuda":
        packed = packed.to(device)
    packed = distributed.all_sum(packed).cpu().numpy()
    width = len(total)
    return packed[:width], packed[width : 2 * width], int(packed[-1])
