"""Prediction on new videos with trained runs: extract with the runs' own backbone configuration, score
every clip with each run's model, fuse, and rank the classes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.backbone import FeatureExtractor, WeightsError, load_backbone, resolve_device, sha256_file
from pipeline.cache import canonical, source_identity
from pipeline.clips import clip_frames
from pipeline.config import LEVELS
from pipeline.extract import frame_source
from pipeline.flow import flow_chunks
from pipeline.fuse import FuseError, fuse, weights_for
from pipeline.train import TrainedRun, load_run, stack_streams
from pipeline.video import VideoDecodeError, VideoReader, preprocess


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class, probability), best first; empty when error is set
    error: str | None = None


def backbone_weights(identity: str, local: Path | None) -> tuple[str, int]:
    """Turn a cache's weights identity back into load_backbone arguments; refuse when unavailable."""
    kind, _, value = identity.partition(":")
    if kind == "torchvision":
        return "imagenet", 0
    if kind == "random":
        return "random", int(value.removeprefix("seed="))
    if kind == "sha256":
        if local is None:
            raise WeightsError(f"the runs' cache was made with a local weights file (sha256 {value[:12]}...); "
                               "pass it with --backbone-weights PATH")
        if sha256_file(local) != value:
            raise WeightsError(f"{local}: sha256 differs from the weights the runs' cache was made with ({value[:12]}...)")
        return str(local), 0
    raise WeightsError(f"unknown weights identity {identity!r} in the runs' cache")


def _video_score(run: TrainedRun, feats: torch.Tensor, device: torch.device) -> np.ndarray:
    """Mean of the clip softmax over all clips of one video: feats (T, C) -> (K,)."""
    clips = torch.from_numpy(clip_frames(len(feats), run.cfg.clip))  # (n, L)
    with torch.no_grad():
        probs = torch.softmax(run.model(feats[clips].to(device)), dim=1)  # (n, K)
    return probs.mean(0).cpu().numpy().astype(np.float64)


def _sources(run: TrainedRun) -> list[dict]:
    """The cache identities whose features the run reads: one, or RGB and flow for twostream."""
    return [run.cache_identity] + ([run.flow_identity] if run.flow_identity is not None else [])


def _video_features(video, identity: dict, extractor: FeatureExtractor, batch_size: int) -> dict[str, torch.Tensor]:
    """Every level's features (T, C) of one video, seen as the cache of ``identity`` saw its videos."""
    pre, flow = frame_source(identity)
    parts: dict[str, list[torch.Tensor]] = {lvl: [] for lvl in LEVELS}
    chunks = VideoReader(video).chunks()
    if flow is not None:  # a flow cache: the backbone saw rendered optical flow
        chunks = flow_chunks(chunks, flow)
    for chunk in chunks:
        x = preprocess(torch.from_numpy(chunk), pre)
        for start in range(0, len(x), batch_size):
            feats = extractor(x[start : start + batch_size])
            for lvl in LEVELS:
                parts[lvl].append(feats[lvl])
    return {lvl: torch.cat(p) for lvl, p in parts.items()}


def predict(videos: list[str | Path], run_dirs: list[str | Path], top: int = 5, method: str | None = None,
            backbone_file: Path | None = None, device: str = "auto", batch_size: int = 64) -> list[Prediction]:
    """Top-``top`` classes of each video, fusing the runs (paper weights when they are one per level and
    modality, else the sum, unless ``method`` says otherwise). RGB, flow and twostream runs of one dataset
    and backbone mix. A video that fails gets ``error`` and no ranking."""
    dev = resolve_device(device)
    runs = [load_run(r, dev) for r in run_dirs]
    identities = {canonical(i): i for run in runs for i in _sources(run)}  # each frame source once
    first = _sources(runs[0])[0]
    for run in runs:
        if any(source_identity(i) != source_identity(first) for i in _sources(run)):
            raise FuseError(f"{run.run} and {runs[0].run} were trained on caches of different datasets or backbones")
    streams = [(r.cfg.streams, r.cfg.level) for r in runs]
    if method is None:
        method = "weighted" if len(set(streams)) == len(streams) and len({m for m, _ in streams}) == 1 else "sum"
    weights = weights_for(streams, None) if method == "weighted" else None
    weights_arg, seed = backbone_weights(first["weights"], backbone_file)
    extractor = FeatureExtractor(load_backbone(weights_arg, seed), dev, first["precision"] if dev.type == "cuda" else "fp32")
    classes = runs[0].classes
    out = []
    for video in videos:
        try:
            feats = {key: _video_features(video, identity, extractor, batch_size) for key, identity in identities.items()}
        except VideoDecodeError as err:
            out.append(Prediction(str(video), [], str(err)))
            continue
        scores = []
        for run in runs:
            levels = [feats[canonical(i)][run.cfg.level] for i in _sources(run)]  # (T, C) per stream
            scores.append(_video_score(run, stack_streams(*levels) if len(levels) == 2 else levels[0], dev))
        fused = fuse([s[None] for s in scores], method, weights)[0]
        order = np.argsort(fused)[::-1][:top]
        out.append(Prediction(str(video), [(classes[i], float(fused[i])) for i in order]))
    return out
