"""Prediction on new videos with trained runs: features through the same path as extraction, with the
backbone and frame source of the runs' caches; every clip scored by each run's model; the runs fused;
the classes ranked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.extract.backbone import FeatureExtractor, load_backbone, resolve_device, weights_from_id
from pipeline.train.clips import VideoScores, clip_frames, score_clips
from pipeline.train.two_streams import stack_streams
from pipeline.extract.features import video_features
from pipeline.evaluate.fuse import FuseError, default_method, fuse, weights_for
from pipeline.cache.identity import CacheIdentity
from pipeline.cache.contents import conflict
from pipeline.train.rundir import RunDir, TrainedRun, load_run
from pipeline.precision import precision_flags, prediction_precision

VIDEOS_AT_ONCE = 32  # videos whose features are held in memory together


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class, probability), best first; empty when error is set
    error: str | None = None


def video_score(run: TrainedRun, feats: torch.Tensor, device: torch.device) -> np.ndarray:
    """The run's score of one video, ``(K,)``, from its features ``feats`` (T, V * C): scored over its clips
    and views (the run's ``test_views``) by ``clips.score_clips``, exactly as evaluation scores test videos."""
    features = feats.reshape(len(feats), len(run.identities[0].views), -1)  # (T, V, C)
    clips = torch.from_numpy(clip_frames(len(feats), run.cfg.clip))  # (n, L)
    scores = VideoScores(1, len(run.classes), device)
    score_clips(run.model, features, clips, torch.zeros(len(clips), dtype=torch.int64), scores,
                test_views=run.cfg.test_views, batch_size=len(clips), device=device)
    return scores.scores()[0].cpu().numpy().astype(np.float64)


def _features_per_identity(videos: list[Path], identities: list[CacheIdentity], extractor: FeatureExtractor,
                        batch_size: int) -> tuple[dict[int, dict[CacheIdentity, dict]], dict[int, str]]:
    """Every level of every video as each cache saw its videos: {video index: {identity: {level: (T, C)}}},
    and {video index: error} for videos that failed."""
    features: dict[int, dict[CacheIdentity, dict]] = {i: {} for i in range(len(videos))}
    errors: dict[int, str] = {}
    for identity in identities:
        for result in video_features(videos, identity.frame_source(), extractor, batch_size=batch_size):
            if result.error is not None:
                errors.setdefault(result.index, result.error)
            else:
                features[result.index][identity] = {k: torch.from_numpy(v) for k, v in result.features.items()}
    return features, errors


def predict(videos: list[str | Path], run_dirs: list[str | Path], *, top: int = 5, method: str | None = None,
            backbone_file: Path | None = None, device: str = "auto", batch_size: int = 64) -> list[Prediction]:
    """Top-``top`` classes of each video, fusing the runs (paper weights when they are one per level and
    modality, else the sum, unless ``method`` says otherwise). RGB, flow and twostream runs of one dataset
    and backbone mix. A video that fails gets ``error`` and no ranking."""
    dev = resolve_device(device)
    runs = [load_run(r, dev) for r in run_dirs]
    first = runs[0].identities[0]
    for run in runs:
        if any(i.without_stream() != first.without_stream() for i in run.identities):
            raise FuseError(f"{run.run} and {runs[0].run} were trained on caches of different datasets or backbones")
    clash = conflict([(str(run.run), RunDir(run.run).read_record()) for run in runs])  # one cache, other contents
    if clash:
        raise FuseError(clash)
    streams = [(r.cfg.streams, r.cfg.level) for r in runs]
    method = method or default_method(streams)
    fusion = (method, weights_for(streams, None) if method == "weighted" else None)
    weights_arg, seed = weights_from_id(first.backbone_weights, backbone_file)
    backbone = load_backbone(weights_arg, seed, first.backbone)
    precision = prediction_precision(first.precision, dev)
    extractor = FeatureExtractor(backbone, dev, precision)
    identities = list(dict.fromkeys(i for run in runs for i in run.identities))  # each frame source once
    paths = [Path(v) for v in videos]
    out = []
    with precision_flags(precision, fixed_shapes=True):  # as extraction computes; put back after
        for first_video in range(0, len(paths), VIDEOS_AT_ONCE):  # bounded memory however many videos
            group = paths[first_video : first_video + VIDEOS_AT_ONCE]
            features, errors = _features_per_identity(group, identities, extractor, batch_size)
            for i, video in enumerate(group):
                if i in errors:
                    out.append(Prediction(str(video), [], errors[i]))
                else:
                    out.append(_ranked(str(video), features[i], runs, fusion, top=top, device=dev))
    return out


def _ranked(video: str, features: dict[CacheIdentity, dict], runs: list[TrainedRun], fusion: tuple, *, top: int,
            device: torch.device) -> Prediction:
    """The ``top`` classes of a video from its features {identity: {level: (T, C)}}: each run's score, fused
    by ``fusion`` (method, weights)."""
    scores = []
    for run in runs:
        levels = [features[identity][run.cfg.level] for identity in run.identities]  # (T, C) per stream
        scores.append(video_score(run, stack_streams(*levels) if len(levels) == 2 else levels[0], device))
    fused = fuse([s[None] for s in scores], *fusion)[0]
    order = np.argsort(fused)[::-1][:top]
    return Prediction(video, [(runs[0].classes[k], float(fused[k])) for k in order])
