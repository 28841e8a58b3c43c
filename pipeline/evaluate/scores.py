"""Score files: a run's video scores with everything fusion checks, written by training, read by fusion,
reports and prediction. numpy only.

``scores_<part>.npz`` (part: ``test``, or ``val`` with --val-fraction) holds::

    scores          (V, K) float   each video's mean clip softmax
    keys, labels    (V,)           the videos and their true classes
    classes         (K,)           class names in label order
    level, model    str            what was trained
    streams         str            rgb, flow or rgb+flow (files from mrrn 0.1.0 call it ``modality``)
    split           int
    cache_identity  str            the cache's identity as canonical JSON
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.cache.identity import CacheIdentity


@dataclass(frozen=True)
class RunScores:
    run: Path
    level: str
    model: str
    streams: str
    split: int
    cache_identity: CacheIdentity
    classes: tuple[str, ...]
    keys: tuple[str, ...]  # (V,)
    labels: np.ndarray  # (V,) int64
    scores: np.ndarray  # (V, K) softmax scores

    @property
    def name(self) -> str:
        """How tables call the run: its level, with its streams and head when not the paper's RGB RRN."""
        name = self.level if self.streams == "rgb" else f"{self.streams} {self.level}"
        return name if self.model == "rrn" else f"{name} ({self.model})"


def scores_path(run: Path, part: str) -> Path:
    return Path(run) / f"scores_{part}.npz"


def write_scores(path: Path, scores: np.ndarray, keys: list[str], labels: np.ndarray, classes: tuple[str, ...],
                 level: str, model: str, streams: str, split: int, identity: CacheIdentity) -> None:
    with atomic_file(path) as f:
        np.savez(f, scores=scores, keys=np.array(keys), labels=labels, classes=np.array(classes), level=level,
                 model=model, streams=streams, split=split, cache_identity=identity.canonical())


def read_scores(run: str | Path, part: str = "test") -> RunScores:
    """A run's ``scores_<part>.npz``; older files' missing fields take their defaults."""
    run = Path(run)
    with np.load(scores_path(run, part), allow_pickle=False) as z:
        streams = z["streams"] if "streams" in z else z["modality"] if "modality" in z else "rgb"
        return RunScores(
            run=run, level=str(z["level"]), model=str(z["model"]) if "model" in z else "rrn",
            streams=str(streams), split=int(z["split"]),
            cache_identity=CacheIdentity.from_json(str(z["cache_identity"])),
            classes=tuple(str(c) for c in z["classes"]), keys=tuple(str(k) for k in z["keys"]),
            labels=z["labels"].astype(np.int64), scores=z["scores"].astype(np.float64),
        )
