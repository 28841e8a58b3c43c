"""Clips: which frames each clip of a video holds, and how clip scores become the video's score.

Training samples clips (30 frames, stride 8, at most 20 per video, short videos looped); at test time
a video's score is the mean of its clips' softmax scores (the paper's protocol). Evaluation and
prediction both use :class:`VideoScores` for that mean.
"""
from __future__ import annotations

import numpy as np
import torch

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


class VideoScores:
    """A video's score is the mean of its clips' softmax scores: add clip probabilities as they come
    (in any order, in any number of batches), read the ``(V, K)`` video scores at the end."""

    def __init__(self, num_videos: int, num_classes: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(num_videos, num_classes, device=device)  # (V, K)
        self.counts = torch.zeros(num_videos, device=device)  # (V,)

    def add(self, probs: torch.Tensor, video: torch.Tensor) -> None:
        """probs: (B, K) clip softmax scores; video: (B,) int64 index of each clip's video, each video's
        clips next to each other (as evaluation and prediction give them)."""
        if not probs.is_cuda:  # index_add_ adds in order on the CPU: deterministic
            self.sums.index_add_(0, video, probs)
            self.counts.index_add_(0, video, torch.ones_like(video, dtype=self.counts.dtype))
            return
        # On CUDA index_add_ adds with atomics in any order; sum each video's run of clips first, so that
        # every cell receives a single addition and the scores are the same from run to run.
        videos, counts = torch.unique_consecutive(video, return_counts=True)  # (U,), (U,)
        self.sums.index_add_(0, videos, torch.segment_reduce(probs, "sum", lengths=counts))
        self.counts.index_add_(0, videos, counts.to(self.counts.dtype))

    def parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The running sums and counts (what several ranks add up before reading the scores)."""
        return self.sums, self.counts

    def scores(self) -> torch.Tensor:
        """(V, K) mean clip softmax of each video."""
        return self.sums / self.counts[:, None]
