"""Arithmetic precision, decided here once: what ``--precision`` means on a device for extraction and for
training, the autocast a precision computes under, and the process-wide TF32 and cuDNN flags it needs,
set for a piece of work and put back after it.

Extraction runs the frozen backbone in fp32, bf16 or fp16 (its weights cast once); training computes its
heads in fp32, with TF32 matrix products (tf32), or with bf16 projections under autocast (bf16). The
choices the command line offers are ``config.PRECISIONS`` and ``config.TRAIN_PRECISIONS``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from pipeline.errors import ConfigError

REDUCED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # precisions that compute in 16 bits
TF32_ALLOWED = {"fp32": False, "tf32": True}  # fp32 means IEEE float32; bf16 and fp16 leave the switches alone


def extraction_precision(requested: str, device: torch.device, recorded: str | None = None) -> str:
    """What `mrrn extract --precision` computes in on ``device``. ``auto`` continues a cache in the precision
    it records (``recorded``), so that one cache never mixes two; for a new cache it is bf16 where the
    processor computes it natively (CUDA GPUs from Ampere on, CPUs with AVX-512 BF16 or AMX), fp16 on older
    GPUs and fp32 on other CPUs. Any other value as asked."""
    if requested != "auto":
        return requested
    if recorded is not None:
        return recorded
    if device.type == "cuda":  # bf16 where the GPU computes it natively, not emulated
        with torch.cuda.device(device):
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_computes_bf16() else "fp32"


def prediction_precision(recorded: str, device: torch.device) -> str:
    """What `mrrn predict` extracts new videos in: the precision the runs' cache records, so that their
    features are computed as the cache's were; fp32 for an fp16 cache on the CPU, which has no fast fp16."""
    return "fp32" if device.type == "cpu" and recorded == "fp16" else recorded


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 natively, as PyTorch's CPU capability checks report: AVX-512 BF16 (AMD
    Zen 4 and later, Intel Cooper Lake) or AMX (Intel Sapphire Rapids and later), where oneDNN runs bf16
    matrix products at about twice float32's rate. Without them bf16 is emulated and slower than float32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def training_precision(requested: str, device: torch.device, recorded: str | None = None) -> str:
    """What `mrrn train --precision` computes in on ``device``. ``auto`` continues a run in the precision its
    record names (``recorded``; a tf32 run goes on in fp32 on the CPU); for a new run it is tf32 on CUDA, bf16 on a CPU
    that computes bf16 natively (:func:`cpu_computes_bf16`; never emulated bf16) and fp32 on other CPUs. bf16
    means bf16 projections under autocast, with the recurrence and the loss in float32, on either device.
    ``tf32``, a CUDA tensor-core format, is refused on the CPU."""
    if requested == "auto":
        if recorded is not None:  # a run begun on a GPU in tf32 goes on in IEEE float32 on the CPU
            return "fp32" if device.type == "cpu" and recorded == "tf32" else recorded
        if device.type == "cuda":
            return "tf32"
        return "bf16" if cpu_computes_bf16() else "fp32"
    if device.type == "cpu" and requested == "tf32":
        raise ConfigError("--precision tf32: TF32 is computed by NVIDIA GPUs only; on the CPU use fp32 or bf16 "
                          f"(bf16 is {'native' if cpu_computes_bf16() else 'emulated, slower than fp32,'} on this CPU)")
    return requested


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a resolved precision computes in: bfloat16, float16, else float32 (fp32 and tf32)."""
    return REDUCED_DTYPES.get(precision, torch.float32)


def autocast(precision: str, device: torch.device):
    """The autocast a resolved precision computes under on ``device``: bf16 or fp16 autocast; nothing for
    fp32 and tf32 (TF32 is a flag, see :func:`precision_flags`)."""
    if precision not in REDUCED_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=REDUCED_DTYPES[precision])


@contextlib.contextmanager
def precision_flags(precision: str, *, fixed_shapes: bool = False) -> Iterator[None]:
    """Within the block, the process-wide CUDA flags a resolved ``precision`` needs: TF32 matrix products
    and cuDNN convolutions off for fp32, on for tf32, as they were for bf16 and fp16; with
    ``fixed_shapes`` (every batch the same shape, as in extraction) cuDNN benchmarks its algorithms and
    keeps the fastest. The previous values are put back on leaving the block, also on an error, so that
    code calling mrrn keeps its own settings."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark
    try:
        if precision in TF32_ALLOWED:
            matmul.allow_tf32 = cudnn.allow_tf32 = TF32_ALLOWED[precision]
        if fixed_shapes:
            cudnn.benchmark = True
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved
