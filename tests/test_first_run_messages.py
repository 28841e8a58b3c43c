"""Mistakes a newcomer makes, each refused in one line that says what is really wrong, before anything
starts and without leaving anything behind."""
from __future__ import annotations

import cv2
import pytest
import torch
from click.testing import CliRunner

from cli import main
from tests.conftest import folder_dataset
from tests.test_extract import extract_args


def one_line(result, expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [expected], result.stderr


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return folder_dataset(tmp_path_factory.mktemp("data"), per_class=1)


def test_a_run_directory_given_as_the_cache_is_called_a_run_directory(sample_cache, tmp_path):
    run = tmp_path / "run"
    tiny = ["--level", "high", "--hidden", "16", "--layers", "1", "--epochs", "1", "--quiet"]
    assert CliRunner().invoke(main, ["train", "--cache", str(sample_cache), *tiny, "--out", str(run)]).exit_code == 0
    result = CliRunner().invoke(main, ["train", "--cache", str(run), *tiny, "--out", str(tmp_path / "again")])
    one_line(result, f"Error: {run}: a run directory (made by `mrrn train`), not a cache; --cache names the .h5 "
                     "file `mrrn extract` wrote")
    assert not (tmp_path / "again").exists()


@pytest.mark.skipif(hasattr(cv2, "optflow"), reason="OpenCV's contrib build is installed")
def test_tvl1_flow_without_opencv_contrib_is_refused_before_any_video_is_read(videos, tmp_path):
    out = tmp_path / "flow.h5"
    result = CliRunner().invoke(main, extract_args(videos, out, "--modality", "flow", "--flow-method", "tvl1"))
    one_line(result, "Error: --flow-method tvl1: TV-L1 flow needs OpenCV's contrib build (pip install "
                     "opencv-contrib-python-headless), which is not installed; or use --flow-method farneback")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="this machine has a GPU")
def test_several_processes_on_cuda_without_a_gpu_are_refused_before_torchrun_starts(videos, tmp_path):
    out = tmp_path / "c.h5"
    result = CliRunner().invoke(main, [*extract_args(videos, out), "--nproc", "2", "--device", "cuda"])
    one_line(result, "Error: --device cuda: this machine has no GPU that CUDA can use, so --nproc 2 cannot put a "
                     "process on each; use --device cpu (or auto)")
    assert not out.exists()


def test_a_learning_rate_beyond_the_optimisers_float32_range_is_refused_before_training(sample_cache, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--cache", str(sample_cache), "--level", "high", "--lr", "1e38",
                                       "--out", str(out), "--quiet"])
    one_line(result, "Error: --lr 1e+38: too large: Adam's first step is 10 times the rate, beyond float32's range "
                     "(3.4e+38); rates that train are far below 1")
    assert not out.exists()
