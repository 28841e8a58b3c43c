"""Accuracy of video scores: numpy only, so that fusion and reports need neither torch nor h5py."""
from __future__ import annotations

import numpy as np


def video_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1, top-5 and mean per-class accuracy of video scores ``(V, K)`` against labels ``(V,)``.
    Ties go to the lower class index."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : min(5, num_classes)]  # (V, <=5)
    hit1 = top[:, 0] == labels
    per_class = [hit1[labels == k].mean() for k in range(num_classes) if (labels == k).any()]
    return {
        "video_top1": float(hit1.mean()),
        "video_top5": float((top == labels[:, None]).any(1).mean()),
        "mean_class_acc": float(np.mean(per_class)),
    }
