"""Clip sampling: pure functions from a video's frame count to the frames of each clip."""
from __future__ import annotations

import numpy as np

from pipeline.config import ClipSpec


def clip_starts(num_frames: int, spec: ClipSpec = ClipSpec()) -> list[int]:
    """First frame of each clip: every ``stride`` frames while a whole clip fits, at most
    ``max_clips`` spread evenly over the video; one clip at 0 when the video is shorter than a clip."""
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    starts = list(range(0, max(num_frames - spec.length, 0) + 1, spec.stride))
    if len(starts) > spec.max_clips:
        picks = np.round(np.linspace(0, len(starts) - 1, spec.max_clips)).astype(int)
        starts = [starts[i] for i in picks]
    return starts


def clip_frames(num_frames: int, spec: ClipSpec = ClipSpec()) -> np.ndarray:
    """Frame indices of every clip, ``(num_clips, length)``; short videos loop (0, 1, .., T-1, 0, 1, ..)."""
    starts = np.asarray(clip_starts(num_frames, spec))[:, None]  # (n, 1)
    return (starts + np.arange(spec.length)[None, :]) % num_frames  # (n, length)
