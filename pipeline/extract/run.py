"""Stage 1: decode every video once, run the frozen backbone, write the feature cache.

The frames-to-features path is ``features.py`` (shared with prediction); this module decides what to
extract (resume, shards), hands each finished video to the cache writer, which puts it on disk at
once, and reports. A video that fails to decode is recorded with its reason and the run goes on.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from pipeline import distributed
from pipeline.extract.backbone import (
    BackboneChoice,
    FeatureExtractor,
    choose_backbone,
    load_chosen,
    resolve_device,
)
from pipeline.cache.reader import (
    FailedRecord,
    FeatureCache,
    VideoRecord,
    recorded_precision,
    remove_cache_files,
    require_identity,
    shard_dir,
    shard_path,
)
from pipeline.cache.writer import CacheWriter
from pipeline.config import VIEW_SETS, ExtractConfig, Preprocess, default_workers
from pipeline.datasets.index import VideoEntry, VideoSet, describe_missing, list_videos, one_class_warning
from pipeline.errors import ConfigError, MrrnError
from pipeline.extract.features import DecodeWorkerDied, VideoFeatures, video_features
from pipeline.extract.flow import require_method
from pipeline.cache.identity import CacheIdentity
from pipeline.extract.workers import start_early
from pipeline.precision import extraction_precision, precision_flags


class ExtractError(MrrnError):
    """The run as a whole failed (every video failed, or one failed under --strict)."""


_ALL_FAILED = "every video failed to decode; nothing was extracted"


def preprocessing(cfg: ExtractConfig, choice: BackboneChoice) -> Preprocess:
    """How ``cfg``'s frames become backbone inputs: the chosen weights' own preprocessing (the paper's for
    random or local weights) with the short side and crop ``cfg`` sets (--short-side, --crop), each
    replacing only itself, and ``cfg``'s views. Sizes that do not fit together are refused in one line."""
    own = choice.preprocess
    short_side = own.short_side if cfg.short_side is None else cfg.short_side
    crop = own.crop if cfg.crop is None else cfg.crop
    if crop > short_side:
        raise ConfigError(f"{_size('--crop', 'crop', crop, cfg.crop)} is larger than "
                          f"{_size('--short-side', 'short side', short_side, cfg.short_side)}: frames are resized "
                          "to the short side, then cropped")
    if choice.fixed_size and crop != choice.fixed_size:
        raise ConfigError(f"--backbone {cfg.backbone} with these weights takes {choice.fixed_size} px frames only, "
                          f"not --crop {crop}")
    return replace(own, short_side=short_side, crop=crop, views=VIEW_SETS[cfg.views], fps=cfg.fps)


def _size(option: str, what: str, value: int, given: int | None) -> str:
    """'--crop 300' when the option set it, else 'the crop 224 (--crop's default for these weights)'."""
    return f"{option} {value}" if given is not None else f"the {what} {value} ({option}'s default for these weights)"


def cache_identity(cfg: ExtractConfig, videos: VideoSet, precision: str, device_type: str = "cpu",
                   choice: BackboneChoice | None = None) -> CacheIdentity:
    """What a cache made by ``cfg`` on ``device_type`` must agree on to be resumed or extended: the
    backbone, its exact weights and levels, and the :func:`preprocessing`. Frames preprocessed on a GPU
    are resized in float32 (rounded back), on the CPU by the uint8 kernel. ``choice``: ``cfg``'s backbone
    already chosen (else chosen here)."""
    choice = choice or choose_backbone(cfg.backbone, cfg.backbone_weights, cfg.seed)
    pre = preprocessing(cfg, choice)
    return CacheIdentity(
        backbone=cfg.backbone, backbone_weights=choice.weights_id,
        preprocess=replace(pre, resize=pre.resize.on_gpu()) if device_type == "cuda" else pre,
        levels=choice.taps.levels, dtype=cfg.dtype, precision=precision, dataset=videos.dataset,
        classes=tuple(videos.classes), modality=cfg.modality, flow=cfg.flow if cfg.modality == "flow" else None,
    )


@dataclass
class ExtractSummary:
    out: str
    videos: int  # in the dataset (this rank's share under torchrun)
    already_done: int  # complete before this run
    extracted: int = 0  # this run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) this run
    frames: int = 0  # decoded this run
    seconds: float = 0.0
    missing: int = 0  # named by split files but not on disk
    non_finite: list[tuple[str, str]] = field(default_factory=list)  # (key, detail): failed for NaN or inf features
    weights: str = ""
    device: str = ""

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _WriterThread:
    """Journal writes (a few ms each, with their fsync) on a thread of their own, behind a bounded queue,
    so the backbone never waits for the disk. Leaving the block drains the queue: every video handed
    over is on disk before the cache is committed. The first write error is raised in the caller."""

    def __init__(self, depth: int = 16):
        self.jobs: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="mrrn-journal", daemon=True)

    def __enter__(self) -> _WriterThread:
        self.thread.start()
        return self

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                try:
                    job()
                except BaseException as err:  # handed to the caller by submit() or __exit__
                    self.error = err

    def submit(self, job) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put(job)

    def __exit__(self, *exc) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def _extract_into(writer: CacheWriter, todo: list[VideoEntry], classes: tuple[str, ...], cfg: ExtractConfig,
                  extractor: FeatureExtractor, summary: ExtractSummary, *, progress: bool, log) -> None:
    """Extract ``todo`` into ``writer``'s journal, one finished video at a time, counting in ``summary``."""
    source = writer.identity.frame_source()  # as the cache records it (the resize of this device)
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    stream = video_features([v.path for v in todo], source, extractor, batch_size=cfg.batch_size,
                            workers=cfg.workers, chunk_frames=cfg.chunk_frames)
    try:
        with _WriterThread() as journal:
            handover = _Handover(todo, classes, writer, journal, summary, bar, say=tqdm.write if progress else log,
                                 strict=cfg.strict, kept_on_failure=frozenset(set(cfg.redo) & writer.complete - writer.discard))
            _consume(stream, handover)
    except DecodeWorkerDied as err:
        raise ExtractError(f"{writer.path}: {err}") from None
    finally:
        bar.close()


@dataclass(frozen=True)
class _Handover:
    """Where each finished video (or failure) of a run goes: to ``writer`` through the journal thread,
    counted in ``summary`` and on ``bar``; a failure is also said, and ends the run under --strict."""

    todo: list[VideoEntry]  # the videos of the stream, by its indices
    classes: tuple[str, ...]
    writer: CacheWriter
    journal: _WriterThread
    summary: ExtractSummary
    bar: tqdm
    say: Callable[[str], None]  # tqdm.write while the bar shows, else the log
    strict: bool
    kept_on_failure: frozenset[str] = frozenset()  # --redo keys whose stored features stay if they fail now

    def take(self, result: VideoFeatures) -> None:
        entry, summary, writer = self.todo[result.index], self.summary, self.writer
        bad = result.error is None and _non_finite(result.features, writer.identity.dtype)
        if bad:
            summary.non_finite.append((entry.key, bad))
            result = VideoFeatures(result.index, error=f"the backbone's features are not finite ({bad})")
        if result.error is not None and entry.key in self.kept_on_failure:
            self.say(f"--redo {entry.key}: {result.error}; the old features were kept")
        elif result.error is not None:
            failure = FailedRecord(entry.key, entry.label, self.classes[entry.label], result.error)
            self.journal.submit(lambda: writer.add_failure(failure))
            summary.failed.append((entry.key, result.error))
            self.say(f"skipped {entry.path}: {result.error}")
        else:
            rec = VideoRecord(key=entry.key, label=entry.label, class_name=self.classes[entry.label], **result.info)
            features = result.features
            self.journal.submit(lambda: writer.add_video(rec, features))
            summary.extracted += 1
            summary.frames += rec.frames
        if result.error is not None and self.strict:
            raise ExtractError(f"{entry.path}: {result.error} (--strict)")


def _non_finite(features: dict, dtype: str) -> str:
    """'level high: 12 of 5120 values' for the first level with NaN or infinity once stored as ``dtype``
    (float16 overflows past 65504); '' when every value is finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        for level, rows in features.items():  # (T, V * C)
            bad = int((~np.isfinite(rows.astype(dtype, copy=False))).sum())
            if bad:
                return f"level {level}: {bad} of {rows.size} values as {dtype}"
    return ""


def _consume(stream, handover: _Handover) -> None:
    """Hand each finished video (or failure) of ``stream`` over, showing the progress."""
    started = time.perf_counter()
    summary, bar = handover.summary, handover.bar
    for result in stream:
        handover.take(result)
        bar.update(1)
        fps = summary.frames / (time.perf_counter() - started)
        bar.set_postfix(done=summary.extracted, failed=len(summary.failed), fps=f"{fps:.1f}", refresh=False)


def _my_share(videos: VideoSet, out: Path, identity: CacheIdentity, rank: distributed.Rank):
    """(this rank's videos, the cache file it writes, keys already in a joined cache). One process: every
    video into ``out``. Under torchrun: a share balanced by file size into its own shard."""
    if not rank.distributed:
        return list(videos.videos), out, set()
    joined = set()
    if out.exists():  # a joined cache from an earlier run: its videos are done
        require_identity(out, identity)
        with FeatureCache(out) as done:
            joined = set(done.columns["key"].tolist())
    sizes = [_file_size(v.path) for v in videos.videos]
    mine = [videos.videos[i] for i in distributed.balanced_shards(sizes, rank.world)[rank.rank]]
    return mine, shard_path(out, rank.rank, rank.world), joined


def run_extract(cfg: ExtractConfig, progress: bool = True, log=print) -> ExtractSummary:
    """Extract every video of ``cfg``'s dataset not yet in ``cfg.out``; finished work is committed even
    when the run stops early (Ctrl-C, --strict). Under torchrun each rank extracts its share of the
    videos (balanced by file size) into its own shard, resumable on its own, and rank 0 joins the
    shards into ``cfg.out`` once every rank is done."""
    started = time.perf_counter()
    if cfg.modality == "flow":
        require_method(cfg.flow.method)  # not one skipped video after another
    videos = list_videos(cfg.dataset, cfg.root, cfg.splits, test_fraction=cfg.test_fraction, strict=cfg.strict)
    rank = distributed.current()
    if videos.missing and rank.is_main:
        log(f"warning: {describe_missing(videos.missing, videos.root)}")
    if one_class_warning(videos.classes) and rank.is_main:
        log(f"warning: {one_class_warning(videos.classes)}")
    device = rank.device(resolve_device(cfg.device))
    rank = distributed.init(device)
    precision = extraction_precision(cfg.precision, device, recorded_precision(Path(cfg.out), rank.rank, rank.world))
    if cfg.workers is None:  # the default depends on the device; on GPUs the ranks share the cores
        workers = default_workers(device.type)
        cfg = replace(cfg, workers=max(1, workers // rank.world) if workers else 0)
    if cfg.workers:
        start_early()  # a no-op when the command line started the workers' server already
    choice = choose_backbone(cfg.backbone, cfg.backbone_weights, cfg.seed)  # a local weights file is hashed once
    identity = cache_identity(cfg, videos, precision, device.type, choice)
    mine, target, joined = _my_share(videos, Path(cfg.out), identity, rank)
    with CacheWriter(target, identity, videos.splits, log=log, missing=videos.missing,
                     commit_every=(cfg.commit_every, cfg.commit_seconds)) as writer:
        redo, writer.discard = _redo_keys(cfg, Path(cfg.out), {v.key for v in videos.videos}, log)
        todo = [v for v in mine if v.key in redo or (v.key not in writer.complete and v.key not in joined)]
        summary = ExtractSummary(out=str(target), videos=len(mine), already_done=len(mine) - len(todo),
                                 missing=len(videos.missing), weights=identity.backbone_weights,
                                 device=f"{device} ({precision})")
        if summary.already_done:
            log(f"resuming {target}: {summary.already_done} of {len(mine)} videos already extracted")
        try:
            if todo:
                if cfg.backbone_weights == "random" and rank.is_main:
                    log(f"note: --backbone-weights random (seed {cfg.seed}): features come from an untrained "
                        f"{'ResNet-34' if cfg.backbone == 'resnet34' else cfg.backbone}")
                extractor = FeatureExtractor(load_chosen(choice, cfg.seed), device, precision)
                with precision_flags(precision, fixed_shapes=True):  # the flags it needs, put back after
                    _extract_into(writer, todo, videos.classes, cfg, extractor, summary, progress=progress, log=log)
        finally:
            writer.finish()
        _refuse_non_finite(summary, target)  # never a cache that training refuses, and never exit 0 with one
        if not writer.complete and not rank.distributed:  # raised inside: the empty cache it made goes too
            raise ExtractError(f"{cfg.out}: {_ALL_FAILED}")
    if rank.distributed:
        distributed.barrier()  # every shard is finished
        if rank.is_main:
            join_shards(Path(cfg.out), identity, videos.splits, log, missing=videos.missing)
        distributed.barrier()
    with FeatureCache(cfg.out) as done:
        if not done.videos:
            raise ExtractError(f"{cfg.out}: {_ALL_FAILED}")
    summary.seconds = time.perf_counter() - started
    return summary


def _refuse_non_finite(summary: ExtractSummary, target: Path) -> None:
    if summary.non_finite:
        key, detail = summary.non_finite[0]
        raise ExtractError(f"{target}: the backbone's features are not finite (NaN or infinity) for "
                           f"{len(summary.non_finite)} video(s), first {key} ({detail}); they are listed as failed. "
                           "Check --backbone-weights, or extract with --precision fp32 and --dtype float32")


def _redo_keys(cfg: ExtractConfig, out: Path, known: set[str], log) -> tuple[set[str], set[str]]:
    """The videos to extract again although the cache holds them: --redo KEY..., and with --redo-damaged
    every video whose rows fail their checksum or are not finite (all of them for a missing level);
    and those damaged ones, whose stored rows go if they fail again."""
    unknown = sorted(set(cfg.redo) - known)
    if unknown:
        raise ExtractError(f"--redo {unknown[0]}: not a video of this dataset (keys look like Class/video.avi)")
    redo = set(cfg.redo)
    if cfg.redo_damaged and out.is_file():
        with FeatureCache(out) as cache:
            damaged = cache.damaged_keys()
        log(f"--redo-damaged: {len(damaged)} video(s) with damaged or non-finite features"
            + (f": {', '.join(damaged[:5])}{', ...' if len(damaged) > 5 else ''}" if damaged else ""))
        redo |= set(damaged)
        return redo, set(damaged)
    return redo, set()


def _file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # it will fail to decode and be listed as failed like any unreadable video


def join_shards(out: Path, identity: CacheIdentity, splits: dict, log=print, *, missing: tuple[str, ...] = ()) -> int:
    """Join every shard in ``out``.shards/ into ``out`` (atomically), then remove them. A shard left by
    a killed run has its journal committed first, so nothing finished is lost. Returns the shard count."""
    shards = sorted(shard_dir(out).glob("*.h5"))
    for shard in shards:
        with CacheWriter(shard, identity, splits, log=log, missing=missing) as writer:
            writer.finish()
    with CacheWriter(out, identity, splits, log=log, missing=missing) as writer:
        writer.absorb(shards)
        writer.finish()
    for shard in shards:
        remove_cache_files(shard)
    try:
        shard_dir(out).rmdir()
    except OSError:
        pass
    if shards:
        log(f"joined {len(shards)} shard(s) into {out}")
    return len(shards)
