"""Stage 2: train a head on one level of the cache, evaluate clip and video accuracy, keep a run directory.

The level is read from the cache once (one HDF5 read) into memory, on the GPU when it fits; clips
are rows of index arrays into it, so a batch is a single gather, with no per-batch I/O.

Run directory::

    config.json        the training configuration and the cache's identity
    metrics.jsonl      one line per epoch: loss, train acc, clip acc, video top-1/top-5, mean class acc, lr, s
    last.pt, best.pt   model + optimiser + epoch + config (+ RNG state in last.pt, for --resume)
    scores_test.npz    the test videos' softmax scores (V, K) with keys and labels: what fusion reads
    scores_val.npz     the same for the validation videos, with --val-fraction (fusion's weight search)
    summary.json       written last; its presence marks the run complete
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline import __version__, distributed
from pipeline.backbone import resolve_device
from pipeline.cache import FeatureCache, canonical, describe_differences, read_identity, source_identity
from pipeline.clips import clip_frames
from pipeline.config import TrainConfig
from pipeline.datasets import hash_split
from pipeline.models import build_model, count_parameters

# Settings that may change when a run is resumed: they do not change what the run computes (the cache
# is compared by its identity, so a moved cache file is still the same cache).
RESUMABLE_FIELDS = ("out", "device", "epochs", "cache", "flow_cache")


class TrainError(Exception):
    """A training run that cannot start as asked; the message says why."""


@dataclass
class ClipSet:
    """One part of a split (train or test) as index arrays into the level's feature matrix."""

    keys: list[str]  # (V,)
    labels: torch.Tensor  # (V,) int64
    clip_rows: torch.Tensor  # (N, L) int64 rows of the feature matrix
    clip_video: torch.Tensor  # (N,) int64 index into keys

    @property
    def num_clips(self) -> int:
        return len(self.clip_video)


@dataclass
class LevelData:
    features: torch.Tensor  # (frames, C), float16 or float32, on the training device
    train: ClipSet
    test: ClipSet
    val: ClipSet | None  # held out of the training videos (--val-fraction), else None
    classes: tuple[str, ...]
    cache_identity: dict
    mean: torch.Tensor | None  # (C,) per-dimension mean of the training videos' frames; with --normalize only
    std: torch.Tensor | None  # (C,)


@dataclass
class _Source:
    """One level in memory with its video table: a cache's, or RGB | flow side by side (twostream)."""

    features: np.ndarray  # (frames, C)
    videos: dict[str, tuple[int, int, int]]  # key -> (first row, frames, label)
    classes: tuple[str, ...]
    identity: dict
    split: tuple[list[str], list[str]]  # (train keys, test keys)
    name: str  # what a message calls it: the cache path, or both


def _clip_set(source: _Source, keys: list[str], cfg: TrainConfig, device: torch.device) -> ClipSet:
    rows, owner = [], []
    for i, key in enumerate(keys):
        offset, frames, _ = source.videos[key]
        clips = clip_frames(frames, cfg.clip) + offset  # (n, L)
        rows.append(clips)
        owner.append(np.full(len(clips), i))
    return ClipSet(
        keys=list(keys),
        labels=torch.tensor([source.videos[k][2] for k in keys], dtype=torch.int64, device=device),
        clip_rows=torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, cfg.clip.length), np.int64)).to(device),
        clip_video=torch.from_numpy(np.concatenate(owner) if owner else np.zeros(0, np.int64)).to(device),
    )


def _statistics(features: np.ndarray, rows: np.ndarray, block: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of ``features[rows]``, accumulated in float64 block by block."""
    total = np.zeros(features.shape[1])
    squares = np.zeros(features.shape[1])
    for start in range(0, len(rows), block):
        x = features[rows[start : start + block]].astype(np.float64)
        total += x.sum(0)
        squares += (x * x).sum(0)
    mean = total / len(rows)
    std = np.sqrt(np.maximum(squares / len(rows) - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def _place(features: np.ndarray, device: torch.device, log) -> torch.Tensor:
    tensor = torch.from_numpy(features)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if tensor.nbytes < free // 2:
            return tensor.to(device)
        log(f"note: the level ({tensor.nbytes / 2**30:.1f} GiB) stays in CPU memory; batches are copied to the GPU")
    return tensor


def _read_source(path: str, modality: str, cfg: TrainConfig) -> _Source:
    """``cfg.level`` of the cache at ``path`` (one read), refusing another modality or a missing split."""
    with FeatureCache(path) as cache:
        have = cache.identity.get("modality", "rgb")
        if have != modality:
            wanted = "--flow-cache" if cfg.model == "twostream" and modality == "flow" else f"--modality {modality}"
            raise TrainError(f"{path}: a {have} cache, but this run asks for {wanted}")
        if cfg.split not in cache.splits:
            known = ", ".join(str(n) for n in sorted(cache.splits)) or "none"
            raise TrainError(f"{path}: no split {cfg.split} in this cache (it has: {known})")
        return _Source(
            features=cache.load_level(cfg.level),  # raises if the cache has no such level
            videos={r.key: (r.offset, r.frames, r.label) for r in cache.videos},
            classes=cache.classes, identity=cache.identity, split=cache.splits[cfg.split], name=str(path),
        )


def stack_streams(rgb: np.ndarray | torch.Tensor, flow: np.ndarray | torch.Tensor):
    """One video's RGB (T, C) and flow (T', C) features side by side, (n, 2C). Flow image i is the motion
    from frame i to frame i+1, so it sits beside RGB frame i+1: n = min(T - 1, T') (the first RGB frame
    has no motion before it; T' = T - 1 when both caches decoded the same frames)."""
    n = max(min(len(rgb) - 1, len(flow)), 0)
    if isinstance(rgb, torch.Tensor):
        return torch.cat([rgb[1 : 1 + n], flow[:n]], dim=1)
    return np.concatenate([rgb[1 : 1 + n], flow[:n]], axis=1)


def join_streams(rgb: _Source, flow: _Source) -> _Source:
    """RGB | flow features side by side (:func:`stack_streams`) for the videos in both caches."""
    have, want = source_identity(rgb.identity), source_identity(flow.identity)
    if have != want:
        fields = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise TrainError(f"{rgb.name} and {flow.name} are not two streams of one dataset and backbone "
                         f"(they differ in: {', '.join(fields)})")
    if rgb.split != flow.split:
        raise TrainError(f"{rgb.name} and {flow.name} hold different video lists for split {rgb.split}")
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
    return _Source(features, videos, rgb.classes, rgb.identity, rgb.split, f"{rgb.name} + {flow.name}")


def load_level_data(cfg: TrainConfig, device: torch.device, log=print) -> LevelData:
    """Read ``cfg.level`` of the cache (and, for twostream, of the flow cache) once and index the split's
    train and test clips."""
    source = _read_source(cfg.cache, cfg.modality, cfg)
    if cfg.model == "twostream":
        source = join_streams(source, _read_source(cfg.flow_cache, "flow", cfg))
    features, where = source.features, ("both caches" if cfg.model == "twostream" else "the cache")
    parts = {}
    for name, keys in zip(("train", "test"), source.split):
        present = [k for k in keys if k in source.videos]
        missing = [k for k in keys if k not in source.videos]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            message = (f"{source.name}: {len(missing)} of the {len(keys)} {name} videos of split {cfg.split} "
                       f"are not in {where} (failed or not extracted): {shown}")
            if not cfg.allow_missing:
                raise TrainError(message + "; --allow-missing trains without them")
            log(f"warning: {message}; going on without them (--allow-missing)")
        if not present:
            raise TrainError(f"{source.name}: split {cfg.split} has no {name} videos in {where}")
        parts[name] = present
    if cfg.val_fraction > 0:
        kept, held = hash_split([(k, source.videos[k][2]) for k in parts["train"]], cfg.val_fraction)
        parts["train"], parts["val"] = [k for k, _ in kept], [k for k, _ in held]
    spans = {k: source.videos[k][:2] for keys in parts.values() for k in keys}  # key -> (first row, frames)
    bad = [k for k, (at, n) in spans.items() if not np.isfinite(features[at : at + n]).all()]
    if bad:
        raise TrainError(f"{source.name}: level {cfg.level} has non-finite features in {len(bad)} video(s): "
                         f"{', '.join(bad[:3])}; run `mrrn inspect --verify` and re-extract them")
    mean = std = None
    if cfg.normalize:  # a pass over every training frame: only when the statistics are used
        train_rows = np.concatenate([np.arange(at, at + n) for at, n in (spans[k] for k in parts["train"])])
        mean, std = _statistics(features, train_rows)
    return LevelData(
        mean=mean, std=std,
        features=_place(features, device, log),
        train=_clip_set(source, parts["train"], cfg, device),
        test=_clip_set(source, parts["test"], cfg, device),
        val=_clip_set(source, parts["val"], cfg, device) if parts.get("val") else None,
        classes=source.classes,
        cache_identity=source.identity,
    )


def _batch(features: torch.Tensor, clips: ClipSet, idx: torch.Tensor, device: torch.device):
    x = features[clips.clip_rows[idx].to(features.device)].to(device, non_blocking=True).float()  # (B, L, C)
    y = clips.labels[clips.clip_video[idx]]  # (B,)
    return x, y


def train_one_epoch(model, optimizer, features, clips: ClipSet, batch_size: int, generator: torch.Generator,
                    device: torch.device, progress: bool = False, desc: str = "",
                    rank: distributed.Rank = distributed.Rank()) -> dict:
    """One epoch in batches of ``batch_size`` clips. With several ranks, every rank draws the same order
    and takes every world-th clip of each batch; the loss is scaled so that DDP's gradient average is
    the mean over the whole batch: the same step as one process, up to floating-point order."""
    model.train()
    order = torch.randperm(clips.num_clips, generator=generator).to(clips.clip_rows.device)
    totals = torch.zeros(2, dtype=torch.float64)  # loss sum, correct clips (this rank's)
    bar = tqdm(range(0, clips.num_clips, batch_size), desc=desc, leave=False, disable=not progress,
               unit="batch", dynamic_ncols=True)
    for start in bar:
        batch = order[start : start + batch_size]  # the global batch, the same on every rank
        idx, weight = batch[rank.rank :: rank.world], 1.0
        if len(idx) == 0:  # fewer clips than ranks in the last batch: take part in the all-reduce with 0
            idx, weight = batch[:1], 0.0
        x, y = _batch(features, clips, idx, device)
        logits = model(x)  # (B, K)
        if rank.distributed:
            summed = F.cross_entropy(logits, y, reduction="sum")
            loss = summed * (weight * rank.world / len(batch))  # DDP then divides the summed gradient by world
        else:  # the one-process loss exactly as before, so single-process runs reproduce bit for bit
            loss = F.cross_entropy(logits, y)
            summed = loss.detach() * len(idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        totals += torch.tensor([float(summed.detach()), int((logits.argmax(1) == y).sum())], dtype=torch.float64) * weight
    loss_sum, correct = distributed.all_sum(totals).tolist()
    return {"loss": loss_sum / clips.num_clips, "train_acc": correct / clips.num_clips}


@torch.no_grad()
def evaluate(model, features, clips: ClipSet, num_classes: int, batch_size: int, device: torch.device,
             rank: distributed.Rank = distributed.Rank()) -> dict:
    """One pass: clip accuracy, and video scores = mean of each video's clip softmax -> top-1/5, class acc.
    With several ranks each scores a contiguous share of the clips and the sums are added up, so every
    clip, and so every video, is counted exactly once."""
    model.eval()
    sums = torch.zeros(len(clips.keys), num_classes, device=device)
    counts = torch.zeros(len(clips.keys), device=device)
    clip_correct = torch.zeros(1, device=device)
    first, last = (clips.num_clips * r // rank.world for r in (rank.rank, rank.rank + 1))
    for start in range(first, last, batch_size):
        idx = torch.arange(start, min(start + batch_size, last), device=clips.clip_rows.device)
        x, y = _batch(features, clips, idx, device)
        probs = F.softmax(model(x), dim=1)  # (B, K)
        clip_correct += (probs.argmax(1) == y).sum()
        video = clips.clip_video[idx].to(device)
        sums.index_add_(0, video, probs)
        counts.index_add_(0, video, torch.ones_like(video, dtype=torch.float32))
    for total in (sums, counts, clip_correct):
        distributed.all_sum(total)
    scores = (sums / counts[:, None]).cpu()  # (V, K)
    labels = clips.labels.cpu()
    metrics = video_metrics(scores, labels, num_classes)
    return {"clip_acc": float(clip_correct) / clips.num_clips, **metrics, "scores": scores.numpy()}


def video_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1, top-5 and mean per-class accuracy of video scores (V, K) against labels (V,)."""
    top = scores.topk(min(5, num_classes), dim=1).indices  # (V, 5)
    hit1 = top[:, 0] == labels
    per_class = [float(hit1[labels == k].float().mean()) for k in range(num_classes) if (labels == k).any()]
    return {
        "video_top1": float(hit1.float().mean()),
        "video_top5": float((top == labels[:, None]).any(1).float().mean()),
        "mean_class_acc": float(np.mean(per_class)),
    }


# ----------------------------------------------------------------------------------------------
# The run directory


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def run_config(cfg: TrainConfig) -> dict:
    """config.json: the training settings and the identity of each cache read (headers only)."""
    config = {"train": cfg.to_json(), "cache": read_identity(Path(cfg.cache)), "mrrn_version": __version__}
    if cfg.flow_cache is not None:
        config["flow_cache"] = read_identity(Path(cfg.flow_cache))
    return config


def _comparable(config: dict) -> dict:
    """The settings that decide what a run computes, flat, so a refusal can name each difference.
    Fields added to the configuration after a run was made take their defaults."""
    train = TrainConfig.from_json(config["train"]).to_json()
    cache = {"modality": "rgb", **config["cache"]}
    flow = config.get("flow_cache", {})
    return {
        **{k: v for k, v in train.items() if k not in RESUMABLE_FIELDS},
        **{f"cache {k}": canonical(v) if isinstance(v, (dict, list)) else v for k, v in cache.items()},
        **{f"flow cache {k}": canonical(v) if isinstance(v, (dict, list)) else v for k, v in flow.items()},
    }


def is_complete(out: Path) -> bool:
    return (Path(out) / "summary.json").is_file()


@dataclass
class RunSummary:
    out: str
    epochs: int
    final: dict  # the last epoch's metrics
    parameters: int
    seconds_per_epoch: float
    resumed_from: int  # epochs already done when this call started
    already_complete: bool = False


def fit(cfg: TrainConfig, resume: bool = False, progress: bool = True, log=print, epoch_lines: bool = True) -> RunSummary:
    """Train ``cfg`` into ``cfg.out``; with ``resume``, continue a killed run from its last checkpoint.
    ``progress``: a bar per epoch; ``epoch_lines``: a one-line summary per epoch through ``log``.

    Under torchrun every rank calls this: each trains on its share of every batch (DDP), evaluation
    adds up the ranks' scores, and rank 0 alone writes the run directory and logs."""
    out = Path(cfg.out)
    rank = distributed.current()
    device = rank.device(resolve_device(cfg.device))
    rank = distributed.init(device)
    if not rank.is_main:
        log, progress = _silent, False
    config = run_config(cfg)  # the headers only: a finished run reads nothing more
    if (out / "config.json").is_file():
        old = json.loads((out / "config.json").read_text())
        if _comparable(old) != _comparable(config):
            raise TrainError(f"{out}: holds a run of another configuration "
                             f"({describe_differences(_comparable(old), _comparable(config))}); use another --out")
        if is_complete(out) and old["train"]["epochs"] == cfg.epochs:
            summary = json.loads((out / "summary.json").read_text())
            log(f"{out}: already complete ({cfg.epochs} epochs); nothing to do")
            return RunSummary(**{**summary, "already_complete": True})
        if not resume:
            raise TrainError(f"{out}: holds an unfinished run of this configuration; pass --resume to continue it "
                             "or use another --out")
    data = load_level_data(cfg, device, log)
    distributed.barrier()  # every rank has checked the run directory before rank 0 writes to it
    if rank.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", config)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.features.shape[1], len(data.classes), data.mean, data.std).to(device)
    trained = torch.nn.parallel.DistributedDataParallel(model) if rank.distributed else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    start_epoch, best = 0, -1.0
    if resume and (out / "last.pt").is_file():
        ckpt = torch.load(out / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, best = ckpt["epoch"], ckpt["best_video_top1"]
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        log(f"resuming {out} after epoch {start_epoch}")
    if rank.is_main:
        _keep_metrics_until(out / "metrics.jsonl", start_epoch)

    num_classes, seconds, metrics = len(data.classes), [], {}
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        lr = cfg.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # the epoch's clip order
        if rank.distributed:  # dropout: each rank its own stream, reproducible on resume without saved state
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7_919 + rank.rank)
        train_stats = train_one_epoch(trained, optimizer, data.features, data.train, cfg.batch_size, generator,
                                      device, progress, desc=f"epoch {epoch + 1}/{cfg.epochs}", rank=rank)
        result = evaluate(model, data.features, data.test, num_classes, cfg.eval_batch_size, device, rank)
        scores = {"test": result.pop("scores")}
        val = {}
        if data.val is not None:
            val = evaluate(model, data.features, data.val, num_classes, cfg.eval_batch_size, device, rank)
            scores["val"] = val.pop("scores")
        seconds.append(time.perf_counter() - started)
        metrics = {"epoch": epoch + 1, **train_stats, **result, **{f"val_{k}": v for k, v in val.items()},
                   "lr": lr, "seconds": round(seconds[-1], 3)}
        chosen_by = val["video_top1"] if val else result["video_top1"]  # best.pt: validation when there is one
        if not rank.is_main:
            best = max(best, chosen_by)
            continue
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if epoch + 1 == cfg.epochs:  # before the checkpoint: a resumed run never lacks its scores
            for part, clips in (("test", data.test), ("val", data.val)):
                if clips is not None:
                    save_scores(out / f"scores_{part}.npz", scores[part], clips, data, cfg)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                 "config": config, "best_video_top1": max(best, chosen_by),
                 "rng": {"cpu": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}}
        if chosen_by > best:
            best = chosen_by
            _save_atomic({k: v for k, v in state.items() if k != "rng"}, out / "best.pt")
        _save_atomic(state, out / "last.pt")
        (log if epoch_lines else _silent)(f"epoch {epoch + 1:>3}/{cfg.epochs}  loss {metrics['loss']:.4f}  train {metrics['train_acc']:.1%}  "
            f"clip {metrics['clip_acc']:.1%}  video top-1 {metrics['video_top1']:.1%}  "
            f"top-5 {metrics['video_top5']:.1%}  class {metrics['mean_class_acc']:.1%}  lr {lr:.0e}  "
            f"{seconds[-1]:.1f} s")
    distributed.barrier()  # rank 0 has written the last epoch
    if not metrics:  # resumed a run whose last checkpoint was its last epoch
        metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    summary = RunSummary(out=str(out), epochs=cfg.epochs, final=metrics, parameters=count_parameters(model),
                         seconds_per_epoch=float(np.mean(seconds)) if seconds else 0.0, resumed_from=start_epoch)
    if rank.is_main:
        _write_json(out / "summary.json", {k: v for k, v in summary.__dict__.items() if k != "already_complete"})
    return summary


def save_scores(path: Path, scores: np.ndarray, clips: ClipSet, data: LevelData, cfg: TrainConfig) -> None:
    """Video scores (V, K) with everything fusion checks: keys, labels, classes, level, split, cache."""
    np.savez(path, scores=scores, keys=np.array(clips.keys), labels=clips.labels.cpu().numpy(),
             classes=np.array(data.classes), level=cfg.level, model=cfg.model, modality=cfg.streams,
             split=cfg.split, cache_identity=canonical(data.cache_identity))


@dataclass
class TrainedRun:
    run: Path
    cfg: TrainConfig
    model: torch.nn.Module  # in eval mode, on the requested device
    classes: tuple[str, ...]
    cache_identity: dict
    flow_identity: dict | None = None  # twostream: the flow cache's


def load_run(run: str | Path, device: torch.device, checkpoint: str = "last.pt") -> TrainedRun:
    """A finished run's model (the last epoch's, which produced its reported scores) ready for inference."""
    run = Path(run)
    if not (run / checkpoint).is_file() or not (run / "config.json").is_file():
        raise TrainError(f"{run}: not a run directory with {checkpoint} and config.json")
    config = json.loads((run / "config.json").read_text())
    cfg = TrainConfig.from_json(config["train"])
    identity = config["cache"]
    classes = tuple(identity["classes"])
    width = sum(int(config[c]["levels"][cfg.level][1]) for c in ("cache", "flow_cache") if c in config)
    model = build_model(cfg, width, len(classes))
    model.load_state_dict(torch.load(run / checkpoint, map_location="cpu", weights_only=False)["model"])
    return TrainedRun(run, cfg, model.to(device).eval(), classes, identity, config.get("flow_cache"))


def _silent(message: str) -> None:
    pass


def _keep_metrics_until(path: Path, epoch: int) -> None:
    """Drop metrics lines of epochs after the checkpoint (a kill between the two writes)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epoch]
    path.write_text("".join(line + "\n" for line in lines))
