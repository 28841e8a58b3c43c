"""Stage 2's loop: ``fit`` trains a head on one level of the cache, epoch by epoch, in the shape of
torchvision's video classification reference (``train_one_epoch``, ``evaluate``, ``fit``).

The data is ``level_data.py``, the run directory ``rundir.py``, the heads ``heads.py``, the arithmetic
``pipeline/precision.py``. Under torchrun every rank calls ``fit``: each trains on its share of every batch
(DDP), evaluation adds up the ranks' scores, and rank 0 alone writes the run directory and logs.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import distributed
from pipeline.extract.backbone import resolve_device
from pipeline.train.clips import VideoScores, score_clips
from pipeline.config import TrainConfig
from pipeline.train.level_data import ClipSet, LevelData, load_level_data, make_batch
from pipeline.train.share_epochs import evaluate_share, train_share_epoch
from pipeline.errors import OutOfMemory, TrainError, memory_for
from pipeline.evaluate.metrics import video_metrics
from pipeline.evaluate.runfiles import DamagedRunFile
from pipeline.train.checkpoints import resume_problem
from pipeline.train.heads import NormalizedHead, build_model, count_parameters
from pipeline.train.rundir import RunDir, RunSummary, run_record
from pipeline.evaluate.layout import BEST_CHECKPOINT, LAST_CHECKPOINT, claimed
from pipeline.evaluate.scores import RunScores, write_scores
from pipeline.precision import autocast, precision_flags, training_precision


class RunPruned(Exception):
    """Raised by a ``fit(on_epoch=...)`` callback to stop a run early (a tuner's pruner judged it hopeless):
    ``fit`` marks the run directory pruned (``RunDir.mark_pruned``) and raises it again to its caller."""


class NonFiniteLoss(TrainError):
    """The loss became NaN or infinite: the weights are ruined from that batch on."""

    def __init__(self, batch: int, batches: int):
        super().__init__(f"batch {batch} of {batches}")
        self.batch, self.batches = batch, batches


@dataclass(frozen=True)
class StepContext:
    """Where and how training and evaluation steps compute: the device, this process's rank among those
    training together, and the arithmetic (resolved: ``precision.training_precision``)."""

    device: torch.device
    rank: distributed.Rank = distributed.Rank()
    precision: str = "fp32"


def train_one_epoch(step_model, optimizer, features, clips: ClipSet, step: StepContext, *, batch_size: int,
                    generator: torch.Generator, views: str = "random", progress: bool = False, desc: str = "") -> dict:
    """One epoch in batches of ``batch_size`` clips of ``features`` (frames, V, C). With a cache of several
    views and ``views='random'`` each clip is read through one view drawn from ``generator`` (the same
    for all of its frames); otherwise through the centre crop. With several ranks, every rank draws the same order
    and takes every world-th clip of each batch; the loss is scaled so that DDP's gradient average is
    the mean over the whole batch: the same step as one process, up to floating-point order.

    Loss and accuracy add up on the device and are read once, at the end: no host synchronisation per
    step on a GPU. A non-finite loss raises :class:`NonFiniteLoss` naming the first such batch: at once
    in one CPU process (where looking costs nothing); otherwise at the end of the epoch, so that no step
    waits for the host and every rank stops at the same point."""
    step_model.train()
    device, rank = step.device, step.rank
    stop_at_once = device.type == "cpu" and not rank.distributed
    order = torch.randperm(clips.num_clips, generator=generator).to(clips.clip_rows.device)
    view_of = None  # (clips,) each clip's view this epoch
    if views == "random" and features.shape[1] > 1:
        view_of = torch.randint(features.shape[1], (clips.num_clips,), generator=generator).to(clips.clip_rows.device)
    bar = tqdm(range(0, clips.num_clips, batch_size), desc=desc, leave=False, disable=not progress,
               unit="batch", dynamic_ncols=True)
    # each step's summed loss and correct clips, written on the device: one copy per step, read once
    losses = torch.zeros(len(bar), dtype=torch.float64, device=device)
    hits = torch.zeros(len(bar), dtype=torch.int64, device=device)
    for number, start in enumerate(bar, start=1):
        batch = order[start : start + batch_size]  # the global batch, the same on every rank
        idx, weight = batch[rank.rank :: rank.world], 1.0
        if len(idx) == 0:  # fewer clips than ranks in the last batch: take part in the all-reduce with 0
            idx, weight = batch[:1], 0.0
        x, y = make_batch(features, clips, idx, device, 0 if view_of is None else view_of[idx])
        with autocast(step.precision, device):
            logits = step_model(x)  # (B, K)
        if rank.distributed:
            summed = F.cross_entropy(logits, y, reduction="sum")
            loss = summed * (weight * rank.world / len(batch))  # DDP then divides the summed gradient by world
        else:  # the one-process loss exactly as before, so single-process runs reproduce bit for bit
            loss = F.cross_entropy(logits, y)
            summed = loss.detach() * len(idx)
        if stop_at_once and not torch.isfinite(summed):
            raise NonFiniteLoss(number, len(bar))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[number - 1] = summed.detach() * weight if weight != 1.0 else summed.detach()  # NaN * 0 stays NaN
        if weight:
            hits[number - 1] = (logits.argmax(1) == y).sum()
    bad = (~torch.isfinite(losses)).nonzero()
    first_bad = distributed.all_min(float(bad[0, 0]) + 1 if len(bad) else math.inf)
    if math.isfinite(first_bad):
        raise NonFiniteLoss(int(first_bad), len(bar))
    loss_sum, correct = distributed.all_sum(torch.stack([losses.sum(), hits.sum().double()])).tolist()
    return {"loss": loss_sum / clips.num_clips, "train_acc": correct / clips.num_clips}


@torch.no_grad()
def evaluate(model, features, clips: ClipSet, step: StepContext, *, num_classes: int, batch_size: int,
             views: str = "all") -> dict:
    """One pass: clip accuracy, and each video's scores (``clips.score_clips``: the mean of its clips'
    softmax, over every view of ``features`` (frames, V, C) or the centre one, as ``views`` says) -> top-1/5,
    class accuracy. With several ranks each scores a contiguous share of the clips and the sums are added
    up, so every clip, and so every video, is counted exactly once."""
    videos = VideoScores(len(clips.keys), num_classes, step.device)
    first, last = (clips.num_clips * r // step.rank.world for r in (step.rank.rank, step.rank.rank + 1))
    video_of = clips.clip_video[first:last]  # (n,) this rank's share of the clips
    top = score_clips(model, features, clips.clip_rows[first:last], video_of, videos, test_views=views,
                      batch_size=batch_size, device=step.device, precision=step.precision)  # (views scored, n)
    clip_correct = (top == clips.labels[video_of]).sum().float().reshape(1)  # (1,)
    for total in (*videos.parts(), clip_correct):
        distributed.all_sum(total)
    scores = videos.scores().cpu().numpy()  # (videos, K)
    metrics = video_metrics(scores, clips.labels.cpu().numpy(), num_classes)
    return {"clip_acc": float(clip_correct) / (clips.num_clips * len(top)), **metrics, "scores": scores}


@dataclass
class _Progress:
    """Where a run stands: the next epoch to train and the best selection accuracy so far."""

    start_epoch: int = 0
    best: float = -1.0


@dataclass(frozen=True)
class _Training:
    """What every epoch of a run works with."""

    cfg: TrainConfig
    data: LevelData
    model: NormalizedHead  # what is evaluated and checkpointed
    step_model: torch.nn.Module  # what training steps call: the DDP wrapper of ``model`` under torchrun, else it
    optimizer: torch.optim.Optimizer
    step: StepContext
    rundir: RunDir
    record: dict  # the run record (config.json), with the precision this device computes in


def _resume(training: _Training, log) -> _Progress:
    """Model, optimiser and RNG state from last.pt (a fresh start when there is none)."""
    rundir, device = training.rundir, training.step.device
    if not rundir.checkpoint_file(LAST_CHECKPOINT).is_file():
        return _Progress()
    ckpt = rundir.load_checkpoint(LAST_CHECKPOINT)
    problem = resume_problem(ckpt, training.model)  # checked whole before anything of it is used
    if problem:
        raise DamagedRunFile(f"{rundir.checkpoint_file(LAST_CHECKPOINT)}: not a checkpoint of this run ({problem}); "
                         "use another --out")
    training.model.load_state_dict(ckpt["model"])
    training.optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    log(f"resuming {rundir.path} after epoch {ckpt['epoch']}")
    return _Progress(ckpt["epoch"], ckpt["best_video_top1"])


def _train_and_evaluate(training: _Training, epoch: int, *, progress: bool) -> tuple[dict, dict]:
    """One epoch: set the rate, train, evaluate on test (and validation) videos. Returns the metrics line
    and the video scores by part."""
    cfg, data, step = training.cfg, training.data, training.step
    started = time.perf_counter()
    lr = cfg.lr_at(epoch)
    for group in training.optimizer.param_groups:
        group["lr"] = lr
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # the epoch's clip order
    if step.rank.distributed:  # dropout: each rank its own stream, reproducible on resume without saved state
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7_919 + step.rank.rank)
    with memory_for("training", "--batch-size (or --hidden, --layers)"):
        how = dict(batch_size=cfg.batch_size, generator=generator, views=cfg.train_views, progress=progress,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}")
        if data.shares:  # each rank its own share of the videos
            train_stats = train_share_epoch(training.step_model, training.optimizer, data.shares["train"],
                                            data.train.labels, step, **how)
        else:
            train_stats = train_one_epoch(training.step_model, training.optimizer, data.features, data.train, step, **how)
    scoring = dict(num_classes=len(data.classes), batch_size=cfg.eval_batch_size, views=cfg.test_views)
    with memory_for("evaluating", "--eval-batch-size"):
        result = _evaluate(training.model, data, "test", step, scoring)
        scores, val = {"test": result.pop("scores")}, {}
        if data.val is not None:
            val = _evaluate(training.model, data, "val", step, scoring)
            scores["val"] = val.pop("scores")
    metrics = {"epoch": epoch + 1, **train_stats, **result, **{f"val_{k}": v for k, v in val.items()},
               "lr": lr, "seconds": round(time.perf_counter() - started, 3)}
    if not data.coverage.complete:  # what the test numbers were computed on, said wherever they are
        metrics["computed_on"] = data.coverage.statement()
    return metrics, scores


def _evaluate(model, data: LevelData, part: str, step: StepContext, scoring: dict) -> dict:
    clips = data.test if part == "test" else data.val
    if data.shares:
        return evaluate_share(model, data.shares[part], clips.labels, step, **scoring)
    return evaluate(model, data.features, clips, step, **scoring)


def _epoch_line(m: dict, epochs: int) -> str:
    return (f"epoch {m['epoch']:>3}/{epochs}  loss {m['loss']:.4f}  train {m['train_acc']:.1%}  "
            f"clip {m['clip_acc']:.1%}  video top-1 {m['video_top1']:.1%}  top-5 {m['video_top5']:.1%}  "
            f"class {m['mean_class_acc']:.1%}  lr {m['lr']:.0e}  {m['seconds']:.1f} s"
            + (f"  {m['computed_on']}" if "computed_on" in m else ""))


def _save_epoch(training: _Training, metrics: dict, scores: dict, state: _Progress) -> None:
    """Rank 0 after each epoch: the metrics line, the scores after the last epoch, then the checkpoints
    (scores first: a resumed run never lacks its scores)."""
    rundir, cfg, data, device = training.rundir, training.cfg, training.data, training.step.device
    not_finite = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if not_finite or not all(np.isfinite(s).all() for s in scores.values()):
        raise TrainError(f"{rundir.path}: epoch {metrics['epoch']} gave non-finite results "
                         f"({', '.join(not_finite) or 'video scores'}); nothing of this epoch was written")
    rundir.append_metrics(metrics)
    chosen_by = metrics.get("val_video_top1", metrics["video_top1"])  # best.pt: validation when there is one
    if metrics["epoch"] == cfg.epochs:
        for part, clips in (("test", data.test), ("val", data.val)):
            if clips is not None:
                write_scores(RunScores(run=rundir.path, level=cfg.level, model=cfg.model, streams=cfg.streams,
                                       split=cfg.split, cache_identity=data.cache_identity, classes=data.classes,
                                       keys=tuple(clips.keys), labels=clips.labels.cpu().numpy(), scores=scores[part],
                                       listed=data.listed.get("test") if part == "test" else None),
                             part)
    checkpoint = {"model": training.model.state_dict(), "optimizer": training.optimizer.state_dict(),
                  "epoch": metrics["epoch"], "config": training.record, "best_video_top1": max(state.best, chosen_by),
                  "rng": {"cpu": torch.get_rng_state(),
                          "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}
    if chosen_by > state.best:
        rundir.save_checkpoint({k: v for k, v in checkpoint.items() if k != "rng"}, BEST_CHECKPOINT)
    rundir.save_checkpoint(checkpoint, LAST_CHECKPOINT)
    state.best = max(state.best, chosen_by)


def make_optimizer(model, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam with the run's rate and weight decay; fused on CUDA (one kernel for every parameter)."""
    return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda" or None)


def fit(cfg: TrainConfig, resume: bool = False, progress: bool = True, log=print, epoch_lines: bool = True, *,
        on_epoch=None) -> RunSummary:
    """Train ``cfg`` into ``cfg.out``; with ``resume``, continue a killed run from its last checkpoint.
    ``progress``: a bar per epoch; ``epoch_lines``: a one-line summary per epoch through ``log``.
    ``on_epoch(epoch, metrics)``, when given, is called on every rank after each epoch is saved; raising
    :class:`RunPruned` there stops the run: its finished epochs are kept, the directory is marked pruned
    (unfinished: ``--resume`` would continue it) and the exception reaches the caller. The process-wide
    flags of the run's arithmetic (TF32 on CUDA by default) hold while it trains and are put back after."""
    rank = distributed.current()
    device = rank.device(resolve_device(cfg.device))
    rank = distributed.init(device)
    if not rank.is_main:
        log, progress = _silent, False
    rundir, record = RunDir(cfg.out), run_record(cfg)  # the caches' headers only
    # what this device computes in, for the record; a run continued (--resume) keeps the precision it recorded
    record["precision"] = training_precision(cfg.precision, device, (rundir.read_record() or {}).get("precision"))
    with claimed(rundir.path, "run") if rank.is_main else contextlib.nullcontext():  # one writer, refused at once
        finished = rundir.check(record, cfg.epochs, resume, log)
        if finished is not None:
            return finished
        fresh = not rundir.record_file.is_file()  # this call writes the record: nothing of the run is on disk yet
        try:
            return _fit(cfg, rundir, record, resume, step=StepContext(device, rank, record["precision"]),
                        progress=progress, log=log, epoch_lines=epoch_lines, on_epoch=on_epoch)
        except OutOfMemory as err:
            kept = rundir.checkpoint_file(LAST_CHECKPOINT).is_file()
            if fresh and not kept and rank.is_main:
                rundir.abandon()  # the same --out takes the run again with the lowered settings
            raise TrainError(f"{rundir.path}: {err}" + ("; the finished epochs are kept" if kept else "")) from None
        except BaseException:  # a refused setting, a first epoch that diverged, Ctrl-C
            if fresh and rank.is_main and not rundir.checkpoint_file(LAST_CHECKPOINT).is_file():
                rundir.abandon()  # nothing of the run is kept: the corrected command may take the same --out
            raise


def _fit(cfg: TrainConfig, rundir: RunDir, record: dict, resume: bool, *, step: StepContext, progress: bool, log,
         epoch_lines: bool, on_epoch=None) -> RunSummary:
    """:func:`fit` once the run directory has been checked: read the data, build the model, train."""
    device, rank = step.device, step.rank
    with precision_flags(record["precision"]):
        data = load_level_data(cfg, device, log)
        distributed.barrier()  # every rank has checked the run directory before rank 0 writes to it
        if rank.is_main:
            rundir.start(record)
        torch.manual_seed(cfg.seed)
        with memory_for("building the model", "--hidden or --layers"):
            model = build_model(cfg, data.width, len(data.classes), data.mean, data.std).to(device)
        step_model = torch.nn.parallel.DistributedDataParallel(model) if rank.distributed else model
        training = _Training(cfg, data, model, step_model, make_optimizer(model, cfg, device), step, rundir, record)
        state = _resume(training, log) if resume else _Progress()
        if rank.is_main:
            rundir.keep_metrics_until(state.start_epoch, log)
        return _epochs(training, state, progress=progress, log=log if epoch_lines else _silent, on_epoch=on_epoch)


def _epochs(training: _Training, state: _Progress, *, progress: bool, log, on_epoch=None) -> RunSummary:
    """The epochs from ``state.start_epoch`` on, each saved by rank 0 and logged through ``log``; the summary."""
    cfg, rundir, rank = training.cfg, training.rundir, training.step.rank
    seconds, metrics = [], {}
    for epoch in range(state.start_epoch, cfg.epochs):
        try:
            metrics, scores = _train_and_evaluate(training, epoch, progress=progress)
        except NonFiniteLoss as err:
            raise _diverged(rundir, cfg, epoch, err) from None
        seconds.append(metrics["seconds"])
        if rank.is_main:
            _save_epoch(training, metrics, scores, state)
            log(_epoch_line(metrics, cfg.epochs))
        if on_epoch is not None:
            try:
                on_epoch(epoch + 1, metrics)
            except RunPruned as pruned:
                if rank.is_main:
                    rundir.mark_pruned(epoch + 1, cfg.epochs, str(pruned))
                raise
    distributed.barrier()  # rank 0 has written the last epoch
    summary = RunSummary(out=str(rundir.path), epochs=cfg.epochs, final=metrics or rundir.last_metrics(),
                         parameters=count_parameters(training.model),
                         seconds_per_epoch=float(np.mean(seconds)) if seconds else 0.0, resumed_from=state.start_epoch,
                         computed_on=training.data.coverage.to_json())
    if rank.is_main:
        rundir.write_summary(summary)
    return summary


def _diverged(rundir: RunDir, cfg: TrainConfig, epoch: int, err: NonFiniteLoss) -> TrainError:
    """The one-line refusal for a run whose loss stopped being finite in 0-based ``epoch``."""
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was written"
    return TrainError(f"{rundir.path}: training stopped: the loss is not finite at epoch {epoch + 1}, batch {err.batch} "
                      f"of {err.batches}; the learning rate ({cfg.lr_at(epoch):g}) is likely too high. {kept[0].upper()}"
                      f"{kept[1:]} and no scores were written")


def _silent(message: str) -> None:
    pass
