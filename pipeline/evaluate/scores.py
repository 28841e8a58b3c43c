"""Score files: a run's video scores with everything fusion checks, written by training, read by fusion,
reports and prediction. numpy only.

``scores_<part>.npz`` (part: ``test``, or ``val`` with --val-fraction; the name comes from ``layout.py``) holds::

    scores          (videos, K) float   each video's mean clip softmax
    keys, labels    (videos,)           the videos and their true classes
    classes         (K,)                class names in label order
    level, model    str                 what was trained
    streams         str                 rgb, flow or rgb+flow (files from mrrn 0.1.0 call it ``modality``)
    split           int
    cache_identity  str                 the cache's identity as canonical JSON
    videos_listed   int                 how many videos of this part the split lists (absent in older files:
                                        as many as were scored); fewer scored means some were missing
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.cache.identity import CacheIdentity
from pipeline.evaluate.layout import RunFiles


@dataclass(frozen=True)
class Coverage:
    """What test numbers were computed on: the videos scored of those the split lists, and how many of the
    classes still have a test video (mean class accuracy averages over those alone)."""

    videos: int
    listed: int
    classes: int  # classes with at least one video scored
    num_classes: int

    @classmethod
    def of(cls, labels: np.ndarray, listed: int, num_classes: int) -> Coverage:
        """``labels`` (videos,): the true classes of the videos scored."""
        return cls(len(labels), int(listed), len(np.unique(np.asarray(labels))), int(num_classes))

    @classmethod
    def from_json(cls, d: dict) -> Coverage:
        return cls(*(int(d[k]) for k in ("test_videos", "test_videos_listed", "classes_with_test_videos", "classes")))

    @property
    def complete(self) -> bool:
        return self.videos >= self.listed and self.classes == self.num_classes

    def statement(self) -> str:
        """'over 31 of 32 test videos (1 missing)', and '; mean class over 7 of 8 classes (1 has no test video
        left)' when a class has none."""
        text = f"over {self.videos} of {self.listed} test videos ({self.listed - self.videos} missing)"
        if self.videos >= self.listed:
            text = f"over {self.videos} of {self.listed} test videos"
        if self.classes < self.num_classes:
            gone = self.num_classes - self.classes
            text += (f"; mean class over {self.classes} of {self.num_classes} classes ({gone} "
                     f"{'has' if gone == 1 else 'have'} no test video left)")
        return text

    def to_json(self) -> dict:
        return {"test_videos": self.videos, "test_videos_listed": self.listed, "classes_with_test_videos": self.classes,
                "classes": self.num_classes, "complete": self.complete, "statement": self.statement()}


@dataclass(frozen=True)
class RunScores:
    """One run's scores of one part's videos: what a score file holds, and the run directory it is in."""

    run: Path
    level: str
    model: str
    streams: str
    split: int
    cache_identity: CacheIdentity
    classes: tuple[str, ...]
    keys: tuple[str, ...]  # (videos,)
    labels: np.ndarray  # (videos,) int64
    scores: np.ndarray  # (videos, K) softmax scores
    listed: int | None = None  # videos of this part the split lists; None: as many as were scored

    @property
    def coverage(self) -> Coverage:
        return Coverage.of(self.labels, len(self.keys) if self.listed is None else self.listed, len(self.classes))

    @property
    def name(self) -> str:
        """How tables call the run: its level, with its streams and head when not the paper's RGB RRN."""
        name = self.level if self.streams == "rgb" else f"{self.streams} {self.level}"
        return name if self.model == "rrn" else f"{name} ({self.model})"


def write_scores(run_scores: RunScores, part: str) -> None:
    """``run_scores`` into its run directory's score file of ``part`` (test or val), replaced whole."""
    with atomic_file(RunFiles(run_scores.run).scores_file(part)) as f:
        np.savez(f, scores=run_scores.scores, keys=np.array(list(run_scores.keys)), labels=run_scores.labels,
                 classes=np.array(list(run_scores.classes)), level=run_scores.level, model=run_scores.model,
                 streams=run_scores.streams, split=run_scores.split,
                 cache_identity=run_scores.cache_identity.canonical(), videos_listed=run_scores.coverage.listed)


def read_scores(run: str | Path, part: str = "test") -> RunScores:
    """A run's ``scores_<part>.npz``; older files' missing fields take their defaults."""
    run = Path(run)
    with np.load(RunFiles(run).scores_file(part), allow_pickle=False) as z:
        streams = z["streams"] if "streams" in z else z["modality"] if "modality" in z else "rgb"
        return RunScores(
            run=run, level=str(z["level"]), model=str(z["model"]) if "model" in z else "rrn",
            streams=str(streams), split=int(z["split"]),
            cache_identity=CacheIdentity.from_json(str(z["cache_identity"])),
            classes=tuple(str(c) for c in z["classes"]), keys=tuple(str(k) for k in z["keys"]),
            labels=z["labels"].astype(np.int64), scores=z["scores"].astype(np.float64),
            listed=int(z["videos_listed"]) if "videos_listed" in z else None,
        )
