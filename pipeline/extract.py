"""Stage 1: decode every video once, run the frozen backbone, write the feature cache.

Worker processes (a torch DataLoader over an IterableDataset) decode videos in bounded chunks and,
on CPU, preprocess them too; the main process gathers frames from several videos into full batches,
runs the backbone and hands each finished video to the cache writer, which puts it on disk at once.
A video that fails to decode is recorded with its reason and the run goes on.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from pipeline import cache as cache_mod
from pipeline import distributed
from pipeline.backbone import (
    FeatureExtractor,
    load_backbone,
    resolve_device,
    resolve_precision,
    weights_identity,
)
from pipeline.config import BACKBONE, LEVELS, ExtractConfig, FlowSpec, Preprocess
from pipeline.datasets import VideoEntry, VideoSet, describe_missing, list_videos
from pipeline.flow import flow_chunks
from pipeline.video import VideoDecodeError, VideoReader, preprocess


WORKER_NICENESS = 10


class ExtractError(Exception):
    """The run as a whole failed (every video failed, or one failed under --strict)."""


def cache_identity(cfg: ExtractConfig, videos: VideoSet, precision: str) -> dict:
    """What a cache must agree on to be resumed or extended (see data/README.md)."""
    pre = cfg.preprocess
    return {
        "backbone": BACKBONE,
        "weights": weights_identity(cfg.weights, cfg.seed),
        "preprocess": {
            "short_side": pre.short_side, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
            "resize": pre.resize,
        },
        "levels": {level: [layer, dim] for level, (layer, dim) in LEVELS.items()},
        "dtype": cfg.dtype,
        "precision": precision,
        "dataset": videos.dataset,
        "classes": list(videos.classes),
        "modality": cfg.modality,
        **({"flow": {"method": cfg.flow.method, "bound": cfg.flow.bound, "size": cfg.flow.size}}
           if cfg.modality == "flow" else {}),
    }


def frame_source(identity: dict) -> tuple[Preprocess, FlowSpec | None]:
    """The inverse of :func:`cache_identity` for what the backbone saw: the preprocessing, and the flow
    rendering for a flow cache (None for RGB). Prediction uses it to see new videos as the cache did."""
    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in identity["preprocess"].items()})
    flow = FlowSpec(**identity["flow"]) if identity.get("modality", "rgb") == "flow" else None
    return pre, flow


# ----------------------------------------------------------------------------------------------
# Decoding workers


@dataclass
class _Job:
    index: int  # position in the run's todo list
    entry: VideoEntry


class DecodeStream(IterableDataset):
    """Yields, per video, its chunks and then one final item with its info or its failure reason.

    Items: ``{"index", "frames": Tensor or None, "info": dict or None, "error": str or None}``.
    Frames are uint8 ``(n, H, W, 3)`` when ``pre`` is None (the GPU preprocesses), else the
    preprocessed float ``(n, 3, crop, crop)``. Worker w of W takes jobs w, w+W, ...
    """

    def __init__(self, jobs: list[_Job], chunk_frames: int, pre: Preprocess | None, flow: FlowSpec | None = None):
        self.jobs, self.chunk_frames, self.pre, self.flow = jobs, chunk_frames, pre, flow

    def __iter__(self):
        import cv2

        cv2.setNumThreads(1)
        w = get_worker_info()
        if w is not None:
            # Below the backbone's threads in priority: on a machine short of cores, inference keeps its
            # CPU and decoding fills the gaps (the prefetch queue keeps the backbone fed meanwhile).
            os.nice(WORKER_NICENESS)
        jobs = self.jobs if w is None else self.jobs[w.id :: w.num_workers]
        for job in jobs:
            reader = VideoReader(job.entry.path, self.chunk_frames)
            chunks = reader.chunks() if self.flow is None else flow_chunks(reader.chunks(), self.flow)
            try:
                for chunk in chunks:
                    frames = torch.from_numpy(chunk)
                    if self.pre is not None:
                        frames = preprocess(frames, self.pre)
                    yield {"index": job.index, "frames": frames, "info": None, "error": None}
            except VideoDecodeError as err:
                yield {"index": job.index, "frames": None, "info": None, "error": str(err)}
                continue
            except Exception as err:  # an unexpected decoder failure must not end the whole run
                yield {"index": job.index, "frames": None, "info": None, "error": f"{type(err).__name__}: {err}"}
                continue
            info = dict(reader.info.__dict__)
            if self.flow is not None:  # T frames give T - 1 flow images
                info["frames"] -= 1
            yield {"index": job.index, "frames": None, "info": info, "error": None}


def worker_context():
    """Decoding workers start from a forkserver that has imported this module and nothing more.

    A plain fork would copy this process after torch's thread pools have run, and torch ops in the
    child (preprocessing) can then deadlock; spawn would pay a fresh torch import per worker.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


# ----------------------------------------------------------------------------------------------
# Batching frames of several videos


@dataclass
class _VideoState:
    parts: dict[str, list[np.ndarray]] = field(default_factory=lambda: {lvl: [] for lvl in LEVELS})
    done: int = 0  # frames whose features came back
    info: dict | None = None  # set when the video's last item arrived


class _Batcher:
    """Gathers frames from consecutive chunks (of any videos) into batches of exactly ``batch_size``."""

    def __init__(self, extractor: FeatureExtractor, batch_size: int, on_features):
        self.extractor, self.batch_size, self.on_features = extractor, batch_size, on_features
        self.pieces: list[tuple[int, torch.Tensor]] = []  # (video index, frames (n, 3, h, w))
        self.count = 0

    def add(self, index: int, frames: torch.Tensor):
        self.pieces.append((index, frames))
        self.count += len(frames)
        while self.count >= self.batch_size:
            self._run(self.batch_size)

    def flush(self):
        if self.count:
            self._run(self.count)

    def _run(self, n: int):
        take, owners, left = [], [], n
        while left:
            index, frames = self.pieces[0]
            k = min(left, len(frames))
            take.append(frames[:k])
            owners.append((index, k))
            if k == len(frames):
                self.pieces.pop(0)
            else:
                self.pieces[0] = (index, frames[k:])
            left -= k
        self.count -= n
        out = self.extractor(torch.cat(take))  # {level: (n, C)}
        row = 0
        for index, k in owners:
            self.on_features(index, {lvl: out[lvl][row : row + k].numpy() for lvl in LEVELS})
            row += k


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class ExtractSummary:
    out: str
    videos: int  # in the dataset
    already_done: int  # complete before this run
    extracted: int  # this run
    failed: list[tuple[str, str]]  # (key, reason) this run
    frames: int  # decoded this run
    seconds: float
    missing: int  # named by split files but not on disk
    weights: str
    device: str

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _Run:
    """One pass over the videos still to do: routes decoded items and features, writes finished videos."""

    def __init__(self, cfg: ExtractConfig, videos: VideoSet, todo: list[VideoEntry], writer, device, precision,
                 progress: bool, log):
        self.cfg, self.videos, self.todo, self.writer, self.log = cfg, videos, todo, writer, log
        self.device, self.on_gpu = device, device.type == "cuda"
        self.extractor = FeatureExtractor(load_backbone(cfg.weights, cfg.seed), device, precision)
        self.states: dict[int, _VideoState] = {}
        self.failed: list[tuple[str, str]] = []
        self.extracted = self.frames = 0
        self.started = time.perf_counter()
        self.progress = progress
        self.bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True, mininterval=0.5)

    def run(self) -> None:
        stream = DecodeStream([_Job(i, e) for i, e in enumerate(self.todo)], self.cfg.chunk_frames,
                              None if self.on_gpu else self.cfg.preprocess,
                              self.cfg.flow if self.cfg.modality == "flow" else None)
        loader = DataLoader(
            stream, batch_size=None, num_workers=self.cfg.workers, pin_memory=self.on_gpu,
            prefetch_factor=4 if self.cfg.workers else None,
            multiprocessing_context=worker_context() if self.cfg.workers else None,
        )
        batcher = _Batcher(self.extractor, self.cfg.batch_size, self.on_features)
        try:
            for item in loader:
                index = item["index"]
                state = self.states.setdefault(index, _VideoState())
                if item["error"] is not None:
                    self.fail(index, item["error"])
                elif item["frames"] is not None:
                    frames = item["frames"]
                    if self.on_gpu:
                        frames = preprocess(frames.to(self.device, non_blocking=True), self.cfg.preprocess)
                    batcher.add(index, frames)
                else:
                    state.info = item["info"]
                    self.finish_if_complete(index)
            batcher.flush()
        finally:
            self.bar.close()

    def on_features(self, index: int, feats: dict[str, np.ndarray]) -> None:
        state = self.states.get(index)
        if state is None:  # the video failed while its earlier frames were queued
            return
        for level in LEVELS:
            state.parts[level].append(feats[level])
        state.done += len(feats["low"])
        self.finish_if_complete(index)

    def finish_if_complete(self, index: int) -> None:
        state = self.states[index]
        if state.info is None or state.done != state.info["frames"]:
            return
        entry = self.todo[index]
        rec = cache_mod.VideoRecord(key=entry.key, label=entry.label, class_name=self.videos.classes[entry.label],
                                    **state.info)
        self.writer.add_video(rec, {level: np.concatenate(state.parts[level]) for level in LEVELS})
        del self.states[index]
        self.extracted += 1
        self.frames += rec.frames
        self._tick(fps=f"{self.frames / (time.perf_counter() - self.started):.1f}")

    def fail(self, index: int, reason: str) -> None:
        entry = self.todo[index]
        self.writer.add_failure(cache_mod.FailedRecord(entry.key, entry.label, self.videos.classes[entry.label], reason))
        self.failed.append((entry.key, reason))
        del self.states[index]
        (tqdm.write if self.progress else self.log)(f"skipped {entry.path}: {reason}")
        self._tick()
        if self.cfg.strict:
            raise ExtractError(f"{entry.path}: {reason} (--strict)")

    def _tick(self, **extra) -> None:
        self.bar.update(1)
        self.bar.set_postfix(done=self.extracted, failed=len(self.failed), **extra, refresh=False)


def run_extract(cfg: ExtractConfig, progress: bool = True, log=print) -> ExtractSummary:
    """Extract every video of ``cfg``'s dataset not yet in ``cfg.out``; finished work is committed even
    when the run stops early (Ctrl-C, --strict). Under torchrun each rank extracts its share of the
    videos (balanced by file size) into its own shard, resumable on its own, and rank 0 joins the
    shards into ``cfg.out`` once every rank is done."""
    started = time.perf_counter()
    videos = list_videos(cfg.dataset, cfg.root, cfg.splits, test_fraction=cfg.test_fraction, strict=cfg.strict)
    rank = distributed.current()
    if videos.missing and rank.is_main:
        log(f"warning: {describe_missing(videos.missing, videos.root)}")
    device = rank.device(resolve_device(cfg.device))
    rank = distributed.init(device)
    precision = resolve_precision(cfg.precision, device)
    identity = cache_identity(cfg, videos, precision)
    mine, target, joined = videos.videos, Path(cfg.out), set()
    if rank.distributed:
        if target.exists():  # a joined cache from an earlier run: its videos are done
            cache_mod.require_identity(target, identity)
            with cache_mod.FeatureCache(target) as done:
                joined = {v.key for v in done.videos}
        sizes = [_file_size(v.path) for v in videos.videos]
        mine = [videos.videos[i] for i in distributed.balanced_shards(sizes, rank.world)[rank.rank]]
        target = cache_mod.shard_path(target, rank.rank, rank.world)
    run = None
    with cache_mod.CacheWriter(target, identity, videos.splits) as writer:
        todo = [v for v in mine if v.key not in writer.complete and v.key not in joined]
        already = len(mine) - len(todo)
        if already:
            log(f"resuming {target}: {already} of {len(mine)} videos already extracted")
        try:
            if todo:
                if cfg.weights == "random" and rank.is_main:
                    log(f"note: --weights random (seed {cfg.seed}): features come from an untrained ResNet-34")
                run = _Run(cfg, videos, todo, writer, device, precision, progress, log)
                run.run()
        finally:
            writer.finish()
    if rank.distributed:
        distributed.barrier()  # every shard is finished
        if rank.is_main:
            join_shards(Path(cfg.out), identity, videos.splits, log)
        distributed.barrier()
    with cache_mod.FeatureCache(cfg.out) as done:
        ok_videos = len(done.videos)
    if ok_videos == 0:
        raise ExtractError(f"{cfg.out}: every video failed to decode; nothing was extracted")
    return ExtractSummary(
        out=str(target), videos=len(mine), already_done=already,
        extracted=run.extracted if run else 0, failed=run.failed if run else [],
        frames=run.frames if run else 0, seconds=time.perf_counter() - started, missing=len(videos.missing),
        weights=identity["weights"], device=f"{device} ({precision})",
    )


def _file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # it will fail to decode and be listed as failed like any unreadable video


def join_shards(out: Path, identity: dict, splits: dict, log=print) -> int:
    """Join every shard in ``out``.shards/ into ``out`` (atomically), then remove them. A shard left by
    a killed run has its journal committed first, so nothing finished is lost. Returns the shard count."""
    shards = sorted(cache_mod.shard_dir(out).glob("*.h5"))
    for shard in shards:
        with cache_mod.CacheWriter(shard, identity, splits) as writer:
            writer.finish()
    with cache_mod.CacheWriter(out, identity, splits) as writer:
        writer.absorb(shards)
        writer.finish()
    for shard in shards:
        cache_mod.remove_cache_files(shard)
    try:
        cache_mod.shard_dir(out).rmdir()
    except OSError:
        pass
    if shards:
        log(f"joined {len(shards)} shard(s) into {out}")
    return len(shards)
