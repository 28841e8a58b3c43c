"""Clips: which frames each clip of a video holds, and how clip scores become the video's score.

Training samples clips (30 frames, stride 8, at most 20 per video, short videos looped); at test time
a video's score is the mean of its clips' softmax scores over its views (the paper's protocol, with
ten-crop testing for caches of several views). Evaluation and prediction both score videos with
:func:`score_clips`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ClipSpec
from pipeline.precision import autocast


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
    (in any order, in any number of batches), read the ``(videos, K)`` video scores at the end."""

    def __init__(self, num_videos: int, num_classes: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(num_videos, num_classes, device=device)  # (videos, K)
        self.counts = torch.zeros(num_videos, device=device)  # (videos,)

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
        """(videos, K) mean clip softmax of each video."""
        return self.sums / self.counts[:, None]


def gather_clips(features: torch.Tensor, rows: torch.Tensor, view: int | torch.Tensor,
                 device: torch.device) -> torch.Tensor:
    """Clips as model input, (B, L, C) float32 on ``device``: ``rows`` (B, L) are rows of ``features``
    (frames, V, C), read through one ``view`` for every clip, or through each clip's own, (B,), the same
    for all of a clip's frames."""
    rows = rows.to(features.device)
    if isinstance(view, int):
        x = features[:, view][rows]  # (B, L, C)
    else:
        x = features[rows, view.to(features.device)[:, None]]  # (B, L, C)
    return x.to(device, non_blocking=True).float()


@torch.no_grad()
def score_clips(model, features: torch.Tensor, clip_rows: torch.Tensor, clip_video: torch.Tensor,
                videos: VideoScores, *, test_views: str, batch_size: int, device: torch.device,
                precision: str = "fp32") -> torch.Tensor:
    """Add the softmax of every clip to its video's scores in ``videos``: clip i is the rows ``clip_rows[i]``
    (n, L) of ``features`` (frames, V, C) and belongs to video ``clip_video[i]`` (n,); ``model`` scores
    ``batch_size`` clips at a time on ``device`` in the resolved ``precision``.

    The test views (``--test-views``): ``all`` scores every clip through each view, so that a video's
    score is the mean over its clips and views (each view has the same clips: the mean over views of the
    per-view video scores, ten-crop testing); ``center`` through view 0, the centre crop, only. Returns
    the top class of each clip through each view scored, (views scored, n)."""
    model.eval()
    scored_views = range(features.shape[1]) if test_views == "all" else range(1)
    top = torch.empty(len(scored_views), len(clip_rows), dtype=torch.int64, device=device)  # (views scored, n)
    for view in scored_views:
        for start in range(0, len(clip_rows), batch_size):
            rows = clip_rows[start : start + batch_size]  # (B, L)
            with autocast(precision, device):
                logits = model(gather_clips(features, rows, view, device))  # (B, K)
            probs = F.softmax(logits.float(), dim=1)  # (B, K)
            top[view, start : start + len(rows)] = probs.argmax(1)
            videos.add(probs, clip_video[start : start + len(rows)].to(device))
    return top
