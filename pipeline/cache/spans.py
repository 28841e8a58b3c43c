"""Reading chosen videos' rows of a level in few, large, contiguous reads, straight into the array that holds
them (training reads a split's videos, or a rank's share of them, rather than the whole level)."""
from __future__ import annotations

import numpy as np


def read_spans(dataset, spans: list[tuple[int, int]]) -> tuple[np.ndarray, list[int]]:
    """The rows of ``spans`` ((first row, rows) of each video) of a ``(N, C)`` dataset, packed one after another
    in the order given: ``(sum of rows, C)``, and each span's first row in it. Spans that follow each other
    both in the dataset and in the order given are read together, with no copy; give them in storage order
    (sorted by first row) for the fewest reads."""
    out = np.empty((sum(n for _, n in spans), dataset.shape[1]), dtype=dataset.dtype)
    packed = np.cumsum([0] + [n for _, n in spans])[:-1].tolist()
    runs: list[list[int]] = []  # [first row in the dataset, end, first row in out]
    for (at, n), to in zip(spans, packed):
        if runs and runs[-1][1] == at and runs[-1][2] + (runs[-1][1] - runs[-1][0]) == to:
            runs[-1][1] = at + n
        elif n:
            runs.append([at, at + n, to])
    for first, end, to in runs:
        dataset.read_direct(out, np.s_[first:end], np.s_[to : to + end - first])
    return out, packed
