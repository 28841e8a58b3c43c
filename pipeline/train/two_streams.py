"""The two-stream join: an RGB and a flow cache of one dataset and backbone, their features side by side."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.cache.identity import STREAM_FIELDS
from pipeline.errors import TrainError

if TYPE_CHECKING:
    from pipeline.train.level_data import LevelTable


def stack_streams(rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor):
    """One video's RGB (T, C) and flow (T', C) features side by side, (n, 2C). Flow image i is the motion
    from frame i to frame i+1, so it sits beside RGB frame i+1: n = min(T - 1, T') (the first RGB frame
    has no motion before it; T' = T - 1 when both caches decoded the same frames)."""
    n = max(min(len(rgb) - 1, len(flow)), 0)
    if isinstance(rgb, torch.Tensor):
        return torch.cat([rgb[1 : 1 + n], flow[:n]], dim=1)
    return np.concatenate([rgb[1 : 1 + n], flow[:n]], axis=1)


def check_streams(rgb: LevelTable, flow: LevelTable) -> None:
    """Refuse an RGB and a flow cache that are not two streams of one dataset, backbone and split."""
    if len(rgb.identity.views) > 1:
        raise TrainError(f"{rgb.name}: --model twostream reads centre-only caches; this one holds "
                         f"{len(rgb.identity.views)} views of each frame (extract with --views center)")
    differing = rgb.identity.differing_fields(flow.identity, ignore=STREAM_FIELDS)
    if differing:
        raise TrainError(f"{rgb.name} and {flow.name} are not two streams of one dataset and backbone "
                         f"(they differ in: {', '.join(differing)})")
    if rgb.split != flow.split:
        raise TrainError(f"{rgb.name} and {flow.name} hold different video lists for this split")


def in_both(rgb: LevelTable, flow: LevelTable) -> LevelTable:
    """The videos of two streams that have both (no row read): each with as many frames as its joined rows."""
    check_streams(rgb, flow)
    videos = {}
    for key, (_, frames, label) in rgb.videos.items():
        joined = max(min(frames - 1, flow.videos[key][1]), 0) if key in flow.videos else 0
        if joined:
            videos[key] = (0, joined, label)
    return replace(rgb, videos=videos, name=f"{rgb.name} + {flow.name}", missing=rgb.missing | flow.missing,
                   failed=rgb.failed | flow.failed, width=rgb.width + flow.width)


def join_streams(rgb: LevelTable, flow: LevelTable) -> LevelTable:
    """RGB | flow features side by side (:func:`stack_streams`) for the videos in both caches (their rows read)."""
    check_streams(rgb, flow)
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
    return replace(rgb, features=features, videos=videos, name=f"{rgb.name} + {flow.name}",
                   missing=rgb.missing | flow.missing, failed=rgb.failed | flow.failed, width=width)


