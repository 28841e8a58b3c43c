"""Several processes on PyTorch's own runtime (torch.distributed, launched by ``torchrun``).

Under ``torchrun --nproc_per_node=N cli.py extract|train ...`` (or ``mrrn extract|train --nproc N``,
which runs exactly that on this machine) each process reads its place from the environment torchrun
sets: RANK, WORLD_SIZE, LOCAL_RANK. Without torchrun the process is rank 0 of 1 and nothing here
opens a process group.

This module also says how many GPUs the machine has (each rank needs its own). It imports torch only
inside the functions that need it, so that the command line can ask before torch is imported.
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Ranks wait for each other at barriers (the join after extraction); a shard can take hours.
BARRIER_TIMEOUT = timedelta(hours=48)


def gpu_count() -> int:
    """The CUDA GPUs this process can use (as torch counts them, CUDA_VISIBLE_DEVICES applied)."""
    import torch

    return torch.cuda.device_count()


def gpus_listed() -> int:
    """The NVIDIA GPUs the operating system lists (``/dev/nvidiaN``), counted without importing torch: the
    command line's guess, before it imports torch, of whether extraction will run on a GPU and start
    decoding workers (their server must start first). It may be wrong (no driver, CUDA_VISIBLE_DEVICES);
    that costs start-up time only. Everything else counts with :func:`gpu_count`."""
    return sum(1 for _ in Path("/dev").glob("nvidia[0-9]*"))


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def device(self, requested: torch.device) -> torch.device:
        """Each rank on its own GPU of the node (cuda:LOCAL_RANK); CPU stays CPU."""
        if self.distributed and requested.type == "cuda":
            count = gpu_count()
            if self.local_rank >= count:  # NCCL cannot put two ranks on one GPU
                raise ConfigError(f"rank {self.rank} needs GPU cuda:{self.local_rank}, but this machine has {count}: "
                                  f"start at most {count} process(es) per machine, or use --device cpu")
            import torch

            return torch.device("cuda", self.local_rank)
        return requested


def check_gpus(nproc: int, device: str) -> None:
    """Refuse, before any process starts, more processes on this machine than it has GPUs when they
    would run on GPUs (each rank needs its own)."""
    count = gpu_count()
    if nproc > 1 and device.startswith("cuda") and count == 0:  # auto runs on the CPU then
        raise ConfigError(f"--device {device}: this machine has no GPU that CUDA can use, so --nproc {nproc} cannot "
                          "put a process on each; use --device cpu (or auto)")
    if nproc > 1 and device != "cpu" and 0 < count < nproc:
        raise ConfigError(f"--nproc {nproc}: each process needs its own GPU and this machine has {count}; "
                          f"use --nproc {count}, or --device cpu")


def current() -> Rank:
    """This process's place, from torchrun's environment (rank 0 of 1 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Rank(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def ranks_here() -> int:
    """How many ranks run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def init(device: torch.device) -> Rank:
    """Open the process group once (NCCL between GPUs, gloo on CPU) when there is more than one rank."""
    import torch
    import torch.distributed as dist

    rank = current()
    if rank.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
        atexit.register(_close)  # a process group left open at exit can abort the process in its threads
    return rank


def _close() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks (in place; the tensor itself when there is one rank)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_min(value: float) -> float:
    """The smallest of every rank's ``value`` (the value itself when there is one rank)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return float(tensor.item())


def balanced_shards(sizes: list[int], world: int) -> list[list[int]]:
    """Indices of ``sizes`` split into ``world`` shards of about equal total size: largest first, each to
    the shard with the least so far (ties: the lower rank). Deterministic, so every rank computes the
    same split, and a rerun the same shards."""
    shards: list[list[int]] = [[] for _ in range(world)]
    totals = [0] * world
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        target = min(range(world), key=lambda r: (totals[r], r))
        shards[target].append(i)
        totals[target] += sizes[i]
    return [sorted(s) for s in shards]


def launch(nproc: int, script: str | Path, args: list[str]) -> int:
    """Run the program ``script`` with ``args`` in ``nproc`` processes on this machine with torchrun
    (standalone rendezvous); returns torchrun's exit status. The command line passes its own file, so
    the library never imports it."""
    from torch.distributed.run import get_args_parser, run

    # torchrun gives each process one thread unless OMP_NUM_THREADS is set, and says so in a banner on
    # every launch; setting the same value here keeps its choice without the banner (set the variable
    # yourself to give each process more threads: docs/distributed.md).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    options = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", str(script), *args])
    try:
        run(options)
    except Exception as err:  # torchrun's ChildFailedError already printed which rank failed and why
        print(f"Error: {type(err).__name__}: one or more ranks failed (see above)", file=sys.stderr)
        return 1
    return 0
