"""Epochs when each rank holds only its own share of the videos (``shares.py``: partitioned or streamed).

Each rank trains on clips of its own videos: ``ceil(B / N)`` a step (``B`` the batch size, ``N`` the ranks),
in a seeded order over its share (streamed: window by window, ``streaming.py``). An epoch has as many steps
as the rank with the most clips needs; a rank that has gone through its clips takes part in the remaining
steps with a weight of 0. Each step's gradient, once DDP has averaged it, is the sum of the clips' losses
over the nominal batch ``B``. Evaluation: each rank scores its own videos and the sums are added up, so
every video is scored exactly once, as in memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import distributed
from pipeline.evaluate.metrics import video_metrics
from pipeline.precision import autocast
from pipeline.train.clips import VideoScores, gather_clips, score_clips
from pipeline.train.streaming import Window


@dataclass(frozen=True)
class HeldPart:
    """A rank's share of one part held in memory (partitioned): one window with all its clips."""

    window: Window

    def windows(self, generator: torch.Generator | None, device: torch.device):
        yield self.window

    def window_clips(self, generator: torch.Generator | None) -> list[int]:
        return [len(self.window.clip_rows)]


def _batches(part, labels: torch.Tensor, generator: torch.Generator, per_rank: int, device: torch.device, views: str):
    """(x (b, L, C), y (b,)) batches of ``per_rank`` clips (fewer at the end of a window), window by window."""
    windows = part.windows(generator, device)
    while (window := next(windows, None)) is not None:
        order = torch.randperm(len(window.clip_rows), generator=generator).to(window.clip_rows.device)
        for start in range(0, len(order), per_rank):
            idx = order[start : start + per_rank]
            view = 0
            if views == "random" and window.features.shape[1] > 1:
                view = torch.randint(window.features.shape[1], (len(idx),), generator=generator)
            x = gather_clips(window.features, window.clip_rows[idx], view, device)  # (b, L, C)
            yield x, labels[window.clip_video[idx].to(labels.device)].to(device)
        del window  # released before the next is awaited


def train_share_epoch(step_model, optimizer, part, labels: torch.Tensor, step, *, batch_size: int,
                      generator: torch.Generator, views: str = "random", progress: bool = False, desc: str = "") -> dict:
    """One epoch over this rank's share ``part`` (``HeldPart`` or ``streaming.StreamedPart``); ``labels``: (videos,)
    of the part's keys. Returns the loss and accuracy over every rank's clips."""
    step_model.train()
    device, rank = step.device, step.rank
    per_rank = math.ceil(batch_size / rank.world)
    mine = sum(math.ceil(n / per_rank) for n in part.window_clips(generator))
    steps = int(-distributed.all_min(-float(mine)))  # the most any rank needs
    losses = torch.zeros(steps, dtype=torch.float64, device=device)
    hits, seen = torch.zeros(steps, dtype=torch.int64, device=device), torch.zeros(steps, dtype=torch.int64, device=device)
    batches, last = _batches(part, labels, generator, per_rank, device, views), None
    for number in tqdm(range(steps), desc=desc, leave=False, disable=not progress, unit="batch", dynamic_ncols=True):
        batch, weight = next(batches, None), 1.0
        if batch is None:  # this rank's clips are done: the step's all-reduce still needs it, with nothing to add
            batch, weight = last, 0.0
        x, y = last = batch
        with autocast(step.precision, device):
            logits = step_model(x)  # (b, K)
        summed = F.cross_entropy(logits, y, reduction="sum")
        loss = summed * (weight / per_rank) if rank.distributed else summed / len(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if weight:
            losses[number], hits[number], seen[number] = summed.detach(), (logits.argmax(1) == y).sum(), len(y)
    bad = (~torch.isfinite(losses)).nonzero()
    first_bad = distributed.all_min(float(bad[0, 0]) + 1 if len(bad) else math.inf)
    if math.isfinite(first_bad):
        from pipeline.train.loop import NonFiniteLoss

        raise NonFiniteLoss(int(first_bad), steps)
    loss_sum, correct, clips = distributed.all_sum(torch.stack([losses.sum(), hits.sum().double(),
                                                                seen.sum().double()])).tolist()
    return {"loss": loss_sum / clips, "train_acc": correct / clips}


@torch.no_grad()
def evaluate_share(model, part, labels: torch.Tensor, step, *, num_classes: int, batch_size: int,
                   views: str = "all") -> dict:
    """Each rank scores the clips of its share ``part``, in storage order; the ranks' sums are added up.
    ``labels``: (videos,) of the part's keys, on every rank."""
    videos = VideoScores(len(labels), num_classes, step.device)
    counts = torch.zeros(2, device=step.device)  # (clips right, clips scored)
    windows = part.windows(None, step.device)
    while (window := next(windows, None)) is not None:
        top = score_clips(model, window.features, window.clip_rows, window.clip_video, videos, test_views=views,
                          batch_size=batch_size, device=step.device, precision=step.precision)  # (views scored, n)
        counts[0] += (top == labels.to(step.device)[window.clip_video.to(step.device)]).sum()
        counts[1] += top.numel()
        del window  # released before the next is awaited
    for total in (*videos.parts(), counts):
        distributed.all_sum(total)
    scores = videos.scores().cpu().numpy()  # (videos, K)
    return {"clip_acc": float(counts[0] / counts[1]), **video_metrics(scores, labels.cpu().numpy(), num_classes),
            "scores": scores}
