"""Stage 2 speed on the device at hand, for the paper's head (input 512, hidden 1024, 3 layers, 30 steps):

    python benchmarks/bench_train.py [--device auto] [--repeats 7]

- kernel-launching ops in one training step (forward, loss, backward, Adam) at batch 28, counted with
  torch.profiler: CUDA kernels on a GPU, leaf ATen ops on the CPU; bare, and inside pipeline.train.loop's
  loop (batch gathering, on-device loss and accuracy);
- SRU forward + backward against torch.nn.LSTM of the same size, and against the SRU's matrix
  products alone (the same F.linear calls, forward and backward), at batch 28 (the paper's) and 256;
  median of --repeats timed batches after one warm-up batch, the three run in turns;
- clips/s for a full epoch on a synthetic cache (random features, 300 videos of 60-200 frames, 20
  classes) through pipeline.train.loop, set up as `mrrn train` does (TF32 and fused Adam on CUDA; there
  after an untimed warm-up epoch), and the time 12 epochs of UCF-101 split 1 (180,000 clips) would take;
  all under the default `--precision auto` (tf32 on a GPU; bf16 on a CPU that computes it natively, fp32
  on others); then the same epoch under `--precision fp32` and `bf16` where auto is neither, against it, in
  one run (and, on a CPU, whether it computes bf16 natively).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESNET34_LEVELS, append_results, synthetic_identity  # noqa: E402
from pipeline.extract.backbone import resolve_device  # noqa: E402
from pipeline.cache.reader import VideoRecord  # noqa: E402
from pipeline.cache.writer import CacheWriter  # noqa: E402
from pipeline.config import TrainConfig  # noqa: E402
from pipeline.train.level_data import load_level_data  # noqa: E402
from pipeline.train.heads import build_model  # noqa: E402
from pipeline.sru.modules import SRU  # noqa: E402
from pipeline.train.loop import StepContext, make_optimizer, train_one_epoch  # noqa: E402
from pipeline.precision import autocast, cpu_computes_bf16, precision_flags, training_precision  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_paired(fns: dict, device, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns (one warm-up round, then ``repeats`` rounds), so that
    a slow spell of the machine weighs on all of them alike."""
    times = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rnn_times(batch: int, device, repeats: int) -> tuple[float, float, float]:
    """Seconds for SRU, LSTM and the SRU's matrix products alone, forward + backward."""
    torch.manual_seed(0)
    x = torch.randn(batch, 30, 512, device=device)
    sru = SRU(512, 1024, 3).to(device)
    lstm = torch.nn.LSTM(512, 1024, 3, batch_first=True).to(device)
    weights = [layer.weight.detach().clone().requires_grad_() for layer in sru.layers]

    def matmuls():  # the SRU's F.linear calls, on time-major input, each feeding the next layer
        h = x.transpose(0, 1)  # no gradient for the input, as in the SRU (cached features need none)
        for w in weights:
            h = torch.nn.functional.linear(h, w)[..., : sru.hidden_size]  # (T, B, H): the next layer's input
        h.sum().backward()

    t = time_paired({"sru": lambda: sru(x).sum().backward(), "lstm": lambda: lstm(x)[0].sum().backward(),
                     "matmuls": matmuls}, device, repeats)
    return t["sru"], t["lstm"], t["matmuls"]


# ATen ops that only make views, allocate or read a scalar: no kernel is launched for them.
NO_KERNEL = {"as_strided", "empty", "empty_strided", "empty_like", "view", "_unsafe_view", "_reshape_alias", "reshape",
             "resolve_conj", "resolve_neg", "detach", "alias", "_local_scalar_dense", "item", "expand", "t",
             "transpose", "select", "slice", "unsqueeze", "squeeze", "permute", "split", "chunk", "unbind",
             "lift_fresh", "resize_", "set_", "to", "_to_copy_meta", "narrow", "new_empty", "new_empty_strided"}


def fit_setup(cfg: TrainConfig, device, num_classes: int):
    """The model and optimizer as `mrrn train` (pipeline.train.loop.fit) sets them up on ``device``: fused
    Adam on CUDA. (Its arithmetic, TF32 projections on CUDA by default, is set around the whole
    benchmark by ``main``.)"""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, 512, num_classes).to(device)
    return model, make_optimizer(model, cfg, device)


def count_ops(fn, device) -> int:
    """Kernel-launching ops of ``fn()``: CUDA kernels on a GPU, leaf ATen ops that compute on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    if device.type == "cuda":
        return sum(1 for e in prof.events() if e.device_type.name == "CUDA")
    return sum(1 for e in prof.events() if computes(e) and not any(map(launches, e.cpu_children)))


def computes(event) -> bool:
    return event.name.startswith("aten::") and event.name[6:] not in NO_KERNEL


def launches(event) -> bool:
    """Whether ``event`` or an op below it computes (an op whose only children make views, such as a
    matrix product calling resolve_conj, is itself the kernel)."""
    return computes(event) or any(map(launches, event.cpu_children))


def ops_per_step(device, precision: str) -> int:
    """Kernel-launching ops in one bare training step of the paper head at batch 28 (forward, loss,
    backward, Adam on random input)."""
    model, optimizer = fit_setup(TrainConfig(cache="-", out="-"), device, 101)
    x, y = torch.randn(28, 30, 512, device=device), torch.randint(0, 101, (28,), device=device)

    def step():
        with autocast(precision, device):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: Adam's state, Triton compilation
    sync(device)
    return count_ops(step, device)


def synthetic_cache(path: Path, videos: int = 300, classes: int = 20) -> None:
    rng = np.random.default_rng(0)
    names = [f"c{k:02d}" for k in range(classes)]
    identity = synthetic_identity(names)
    keys = [f"{names[i % classes]}/v{i:04d}.avi" for i in range(videos)]
    splits = {1: (tuple(k for i, k in enumerate(keys) if i % 4), tuple(k for i, k in enumerate(keys) if not i % 4))}
    with CacheWriter(path, identity, splits) as w:
        for i, key in enumerate(keys):
            n = int(rng.integers(60, 201))
            feats = {lvl: rng.normal(size=(n, dim)).astype(np.float16) for lvl, (_, dim) in RESNET34_LEVELS.items()}
            w.add_video(VideoRecord(key, i % classes, names[i % classes], n, 25.0, 320, 240, n), feats)
        w.finish()


PRECISION_NOTES = {"fp32": " (IEEE float32 throughout)",
                   "bf16": " (the projections under bf16 autocast; the recurrence and the loss in float32)"}


def epoch_figures(device, precision: str) -> tuple[float, int, float, int]:
    """clips/s of a full epoch of pipeline.train.loop's loop on a synthetic cache, set up as `mrrn train` does
    (after an untimed warm-up: a whole epoch on a GPU for Triton and cuBLAS, 8 steps on a CPU), the epoch's clips, and the
    kernel-launching ops per step of that loop (its batch gathering and on-device bookkeeping included)
    over a short epoch, with its steps."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "synthetic.h5"
        synthetic_cache(cache)
        cfg = TrainConfig(cache=str(cache), out=str(Path(tmp) / "run"), level="high")
        data = load_level_data(cfg, device, log=lambda m: None)
        model, optimizer = fit_setup(cfg, device, len(data.classes))

        def epoch(clips):
            train_one_epoch(model, optimizer, data.features, clips, StepContext(device, precision=precision),
                            batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(0))

        n = cfg.batch_size * 8  # 8 full steps
        short = dataclasses.replace(data.train, clip_rows=data.train.clip_rows[:n], clip_video=data.train.clip_video[:n])
        epoch(data.train if device.type == "cuda" else short)  # untimed warm-up
        sync(device)
        start = time.perf_counter()
        epoch(data.train)
        sync(device)
        clips_per_s = data.train.num_clips / (time.perf_counter() - start)
        return clips_per_s, data.train.num_clips, count_ops(lambda: epoch(short), device) / 8, 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    device = resolve_device(args.device)
    precision = training_precision(TrainConfig(cache="-", out="-").precision, device)
    with precision_flags(precision):  # the arithmetic `mrrn train` computes in, for every figure
        ops = ops_per_step(device, precision)
        lines = ["| batch | SRU fwd+bwd | LSTM fwd+bwd | LSTM / SRU | SRU's matrix products alone "
                 "| SRU / its products |", "|---|---|---|---|---|---|"]
        for batch in (28, 256):
            t_sru, t_lstm, t_mm = rnn_times(batch, device, args.repeats)
            lines.append(f"| {batch} | {1000 * t_sru:.1f} ms | {1000 * t_lstm:.1f} ms | **{t_lstm / t_sru:.2f}x** | "
                         f"{1000 * t_mm:.1f} ms | **{t_sru / t_mm:.2f}x** |")
        clips_per_s, clips, loop_ops, loop_steps = epoch_figures(device, precision)
    others = {}  # the same epoch in IEEE float32 and with bf16 projections, where auto is neither
    for other in (p for p in ("fp32", "bf16") if p != precision):
        with precision_flags(other):
            others[other] = epoch_figures(device, other)[0]
    ucf_hours = 12 * 180_000 / clips_per_s / 3600
    what = "CUDA kernels" if device.type == "cuda" else "leaf ATen ops"
    append_results(
        f"bench_train on {device}",
        [f"One training step of the paper head (batch 28, Adam): **{ops} {what}** (torch.profiler); "
         f"**{loop_ops:.0f}** per step in pipeline.train.loop's loop (batch gathering and on-device bookkeeping "
         f"included; one epoch of {loop_steps} steps, its own start and end spread over them).", "",
         f"Input 512, hidden 1024, 3 layers, 30 steps; median of {args.repeats} batches after a warm-up, "
         "SRU, LSTM and matrix products in turns.", "",
         *lines, "",
         f"Full training epoch, paper head (hidden 1024, 3 layers, batch 28) on a synthetic cache: "
         f"{clips} clips at **{clips_per_s:.1f} clips/s**; 12 epochs of UCF-101 split 1 (180,000 clips) would take "
         f"**{ucf_hours:.1f} h** on this device.", "",
         *(f"The same epoch with `--precision {other}`{PRECISION_NOTES[other]}: **{rate:.1f} clips/s**; the default "
           f"(`auto`, {precision} here) runs at **{clips_per_s / rate:.2f}x** its rate, in this run."
           for other, rate in others.items()), "",
         f"On this device `--precision auto` is {precision}" + ("." if device.type == "cuda" else
                                                              f"; this CPU computes bf16 {'natively' if cpu_computes_bf16() else 'only by emulation'}.")],
    )


if __name__ == "__main__":
    main()
