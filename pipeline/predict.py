"""Prediction on new videos with trained runs: extract with the runs' own backbone configuration, score
every clip with each run's model, fuse, and rank the classes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.backbone import FeatureExtractor, WeightsError, load_backbone, resolve_device, sha256_file
from pipeline.cache import canonical
from pipeline.clips import clip_frames
from pipeline.config import LEVELS
from pipeline.extract import frame_source
from pipeline.flow import flow_chunks
from pipeline.fuse import FuseError, fuse, weights_by_level
from pipeline.train import TrainedRun, load_run
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


def predict(videos: list[str | Path], run_dirs: list[str | Path], top: int = 5, method: str | None = None,
            backbone_file: Path | None = None, device: str = "auto", batch_size: int = 64) -> list[Prediction]:
    """Top-``top`` classes of each video, fusing the runs (paper weights when they are one per level,
    else the sum, unless ``method`` says otherwise). A video that fails gets ``error`` and no ranking."""
    dev = resolve_device(device)
    runs = [load_run(r, dev) for r in run_dirs]
    identity = runs[0].cache_identity
    for other in runs[1:]:
        if canonical(other.cache_identity) != canonical(identity):
            raise FuseError(f"{other.run} and {runs[0].run} were trained on different caches")
    levels = [r.cfg.level for r in runs]
    if method is None:
        method = "weighted" if len(set(levels)) == len(levels) else "sum"
    weights = None
    if method == "weighted":
        weights = weights_by_level(levels, None)
    weights_arg, seed = backbone_weights(identity["weights"], backbone_file)
    pre, flow = frame_source(identity)
    extractor = FeatureExtractor(load_backbone(weights_arg, seed), dev, identity["precision"] if dev.type == "cuda" else "fp32")
    classes = runs[0].classes
    out = []
    for video in videos:
        try:
            parts: dict[str, list[torch.Tensor]] = {lvl: [] for lvl in LEVELS}
            chunks = VideoReader(video).chunks()
            if flow is not None:  # the runs were trained on flow features
                chunks = flow_chunks(chunks, flow)
            for chunk in chunks:
                x = preprocess(torch.from_numpy(chunk), pre)
                for start in range(0, len(x), batch_size):
                    feats = extractor(x[start : start + batch_size])
                    for lvl in LEVELS:
                        parts[lvl].append(feats[lvl])
        except VideoDecodeError as err:
            out.append(Prediction(str(video), [], str(err)))
            continue
        scores = [_video_score(r, torch.cat(parts[r.cfg.level]), dev) for r in runs]
        fused = fuse([s[None] for s in scores], method, weights)[0]
        order = np.argsort(fused)[::-1][:top]
        out.append(Prediction(str(video), [(classes[i], float(fused[i])) for i in order]))
    return out
