"""Precision: what --precision means on the CPU for extraction, training and prediction, and the
process-wide TF32 / cuDNN flags, which mrrn sets around its own work and gives back to the code that
called it, also when that work fails."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import PRECISIONS
from pipeline.errors import ConfigError
from pipeline.precision import (
    autocast,
    extraction_precision,
    precision_flags,
    prediction_precision,
    training_precision,
)
from tests.conftest import QUIET
from tests.conftest import small_train_config as small

CPU = torch.device("cpu")


def flags() -> tuple[bool, bool, bool]:
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)


@pytest.fixture
def callers_flags():
    """A caller's own settings, unlike torch's defaults, put back after the test whatever it does."""
    before = flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = (
        True, False, False)
    yield flags()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native_bf16(request, monkeypatch):
    """This CPU as one that computes bf16 natively, and as one that does not (detection forced)."""
    monkeypatch.setattr("pipeline.precision.cpu_computes_bf16", lambda: request.param)
    return request.param


def test_on_the_cpu_auto_is_bf16_only_where_the_cpu_computes_it_natively(native_bf16):
    auto = "bf16" if native_bf16 else "fp32"
    assert extraction_precision("auto", CPU) == auto
    assert training_precision("auto", CPU) == auto
    for precision in PRECISIONS[1:]:
        assert extraction_precision(precision, CPU) == precision
    assert [training_precision(p, CPU) for p in ("fp32", "bf16")] == ["fp32", "bf16"]


def test_auto_continues_what_a_cache_or_a_run_records(native_bf16):
    """An existing cache is extended, and a run resumed, in the precision it records, whatever auto would pick
    for new work; a run begun in tf32 on a GPU goes on in IEEE float32 on the CPU."""
    for recorded in ("fp32", "bf16", "fp16"):
        assert extraction_precision("auto", CPU, recorded) == recorded
        assert extraction_precision("fp32", CPU, recorded) == "fp32"  # an explicit choice stands (and is checked)
    assert [training_precision("auto", CPU, r) for r in ("fp32", "bf16", "tf32")] == ["fp32", "bf16", "fp32"]


def test_tf32_is_refused_on_the_cpu_in_one_line():
    with pytest.raises(ConfigError, match="--precision tf32: TF32 is computed by NVIDIA GPUs only") as err:
        training_precision("tf32", CPU)
    assert "\n" not in str(err.value)


def test_prediction_on_the_cpu_extracts_as_the_cache_was_made():
    """bf16 and fp32 caches are matched; fp16 (a GPU's) is computed in fp32, the CPU having no fast fp16."""
    assert [prediction_precision(p, CPU) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp32"]


def test_fp32_and_tf32_compute_without_autocast():
    x = torch.randn(3, 4)
    for precision in ("fp32", "tf32"):
        with autocast(precision, CPU):
            assert (x @ x.T).dtype == torch.float32
    with autocast("bf16", CPU):
        assert (x @ x.T).dtype == torch.bfloat16


@pytest.mark.parametrize("precision, inside", [("fp32", (False, False)), ("tf32", (True, True)),
                                               ("bf16", (True, False))])
def test_the_flags_hold_inside_the_block_and_the_callers_come_back(callers_flags, precision, inside):
    with precision_flags(precision, fixed_shapes=True):
        assert flags() == (*inside, True)  # bf16: TF32 switches as the caller had them
    assert flags() == callers_flags


def test_the_callers_flags_come_back_after_an_error(callers_flags):
    with pytest.raises(RuntimeError, match="stopped"):
        with precision_flags("fp32", fixed_shapes=True):
            raise RuntimeError("stopped")
    assert flags() == callers_flags


NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_CUDA)]


@pytest.mark.parametrize("device", DEVICES)
def test_training_gives_the_callers_flags_back(callers_flags, sample_cache, tmp_path, device):
    from pipeline.train.loop import fit

    fit(small(sample_cache, tmp_path / "r", epochs=1, device=device), **QUIET)
    assert flags() == callers_flags


@pytest.mark.parametrize("device", DEVICES)
def test_extraction_gives_the_callers_flags_back(callers_flags, tmp_path, device):
    from pipeline.extract.run import run_extract
    from tests.conftest import folder_dataset, small_extract_config

    run_extract(small_extract_config(folder_dataset(tmp_path / "data"), tmp_path / "c.h5", device=device,
                                     precision="fp32"), **QUIET)
    assert flags() == callers_flags
