"""Training refuses, in one line, what it cannot do well: a machine out of memory (the same --out then
takes the run with lower settings), and a validation split that would empty a part of the data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import one_line_error, QUIET, run, small_extract_config, write_video


TINY = ["--layers", "1", "--lr", "1e-3", "--lr-step", "100", "--normalize", "--quiet"]


def test_out_of_memory_is_one_line_naming_the_setting_and_leaves_the_out_free(sample_cache, tmp_path):
    out = tmp_path / "run"
    # a real allocation failure: the first layer's weights alone would need hundreds of GiB
    result = run("train", "--cache", sample_cache, "--level", "high", "--out", out, "--epochs", "1",
                 "--hidden", "100000000", *TINY)
    one_line_error(result, f"{out}: out of memory while building the model", "lower --hidden or --layers")
    assert not (out / "config.json").exists()
    again = run("train", "--cache", sample_cache, "--level", "high", "--out", out, "--epochs", "1", "--hidden", "16",
                *TINY)
    assert again.exit_code == 0, again.output
    straight = run("train", "--cache", sample_cache, "--level", "high", "--out", tmp_path / "straight", "--epochs",
                   "1", "--hidden", "16", *TINY)
    assert straight.exit_code == 0, straight.output
    assert (json.loads((out / "summary.json").read_text())["final"]["video_top1"]
            == json.loads((tmp_path / "straight" / "summary.json").read_text())["final"]["video_top1"])


def _folder_cache(base: Path, counts: dict[str, int]) -> Path:
    """A folder dataset of ``counts`` videos per class, half of each class for testing, extracted."""
    from pipeline.extract.run import run_extract

    for c, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_video(base / "videos" / name / f"{name}{i}.avi", 12 + i, seed=10 * c + i)
    cache = base / "c.h5"
    run_extract(small_extract_config(base / "videos", cache, test_fraction=0.5), **QUIET)
    return cache


SHORT = ["--epochs", "1", "--hidden", "16", "--clip-length", "4", "--clip-stride", "4", *TINY]


def test_val_fraction_never_holds_out_a_class_s_only_training_video(tmp_path):
    cache = _folder_cache(tmp_path, {"jump": 4, "walk": 2})  # walk: one training video
    out = tmp_path / "run"
    result = run("train", "--cache", cache, "--level", "high", "--out", out, "--val-fraction", "0.5", *SHORT)
    assert result.exit_code == 0, result.output
    val = np.load(out / "scores_val.npz")
    assert len(val["keys"]) and all(str(k).startswith("jump/") for k in val["keys"])


def test_val_fraction_that_leaves_no_validation_video_is_one_line(tmp_path):
    cache = _folder_cache(tmp_path, {"jump": 2, "walk": 2})  # one training video per class
    out = tmp_path / "run"
    result = run("train", "--cache", cache, "--level", "high", "--out", out, "--val-fraction", "0.5", *SHORT)
    one_line_error(result, "--val-fraction 0.5: leaves no validation videos in split 1")
    assert not (out / "config.json").exists()
    again = run("train", "--cache", cache, "--level", "high", "--out", out, *SHORT)
    assert again.exit_code == 0, again.output
