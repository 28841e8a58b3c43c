"""Stage 1 throughput: the whole `mrrn extract` command against a bare ResNet-34 forward and against
mrrn's own trunk over the same number of frames at the same size, with decoding alone beside them.

    python benchmarks/bench_extract.py [--crop 64] [--clips N] [--frames 200] [--videos DIR] [--device auto]
                                       [--steady | --no-steady] [--precisions fp32,auto]

The load is UCF-101-like: 320x240 MPEG-4 AVIs at 25 fps (up to 60 distinct clips generated here with
OpenCV's writer, repeated through links up to --clips videos, each decoded in full), or every file in
--videos. Preprocessing: shorter side = crop * 8/7 (256 for 224), centre crop.

- bare forward: torchvision's resnet34 as built, inference mode, autocast at the extraction's precision,
  on random tensors of the crop size, batch as the extraction's;
- mrrn's trunk: what `extract` runs (batch norms folded, weights cast once, channels-last), on random
  frames already on the device: the backbone-only rate the whole pipeline is measured against;
- the whole command: a new process, imports, decoding workers, backbone, cache. With --steady (the
  default on a GPU, where start-up is seconds against a fraction of a second of work), it runs again on
  the load twice over: the difference is the steady rate, the rest the start-up, and UCF-101's 2.5
  million frames are projected from both.

The trunk and the whole command are measured at each of ``--precisions`` in one run (by default fp32 and
what ``auto`` picks on this device when that differs: bf16 on GPUs and on CPUs that compute it natively),
the whole commands first, then the trunks, so that each pair shares the machine's state; the report says
whether this CPU computes bf16 natively.

By default 60 clips at crops up to 112 px (about 12,000 frames) and 24 at larger ones on a CPU (4,800
frames: a command's few seconds of start-up, imports and model building, weigh as they would in a few
minutes' extraction, not in a 20-second one); 1,000 (200,000 frames) on a GPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_results  # noqa: E402
from pipeline.extract.backbone import FeatureExtractor, load_backbone, resolve_device  # noqa: E402
from pipeline.config import ExtractConfig, Preprocess, default, default_workers  # noqa: E402
from pipeline.datasets.index import VIDEO_EXTENSIONS  # noqa: E402
from pipeline.extract.video import VideoReader, preprocess  # noqa: E402
from pipeline.precision import autocast, cpu_computes_bf16, extraction_precision, precision_flags  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


DISTINCT_CLIPS = 60
UCF101_FRAMES = 2.5e6


def write_clips(folder: Path, count: int = 6, frames: int = 200) -> list[Path]:
    """UCF-101-like clips: 320x240 MPEG-4 (XviD fourcc) at 25 fps, a textured scene panning and brightening.
    At most DISTINCT_CLIPS are written; the rest are links to them (decoded in full all the same)."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"clip{i}.avi"
        paths.append(path)
        if i >= DISTINCT_CLIPS:
            path.symlink_to(paths[i % DISTINCT_CLIPS])
            continue
        rng = np.random.default_rng(i)
        scene = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 2 + i)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"XVID"), 25.0, (320, 240))
        for t in range(frames):
            x, y = (3 * t) % 320, (2 * t) % 240
            writer.write(cv2.convertScaleAbs(scene[y : y + 240, x : x + 320], alpha=1.0, beta=t % 40))
        writer.release()
    return paths


def doubled(root: Path, paths: list[Path], name: str) -> Path:
    """A dataset folder holding the load twice over (links), for the steady rate."""
    folder = root.with_name(f"{root.name}_x2_{name}") / "clips"
    folder.mkdir(parents=True)
    for copy in range(2):
        for p in paths:
            (folder / f"{copy}_{p.name}").symlink_to(p.resolve())
    return folder.parent


def bare_forward(device, crop: int, batch: int, frames: int, precision: str) -> float:
    """frames/s of torchvision's ResNet-34 (whole model, inference mode) on random (batch, 3, crop, crop)."""
    model = torchvision.models.resnet34().eval().to(device)
    x = torch.randn(batch, 3, crop, crop, device=device)
    with torch.inference_mode(), autocast(precision, device):  # torch's own flags, as a user would run it
        model(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        done, start = 0, time.perf_counter()
        while done < frames:
            model(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def trunk_forward(device, crop: int, batch: int, frames: int, precision: str) -> float:
    """frames/s of mrrn's trunk (what extract runs) on random frames already on the device, each batch's
    features read back one batch later as extract does."""
    extractor = FeatureExtractor(load_backbone("random"), device, precision)
    x = torch.randn(batch, 3, crop, crop, device=device)
    with precision_flags(precision, fixed_shapes=True):  # the flags extraction runs under
        extractor(x)  # warm-up (cuDNN picks its algorithms)
        pending, done, start = None, 0, time.perf_counter()
        while done < frames:
            submitted = extractor.submit(x)
            if pending is not None:
                pending.result()
            pending, done = submitted, done + batch
        pending.result()
    return done / (time.perf_counter() - start)


def _decode_count(path: Path) -> int:
    import cv2

    cv2.setNumThreads(1)
    return sum(len(c) for c in VideoReader(path).chunks())


def decode_pool(paths: list[Path], workers: int) -> tuple[int, float]:
    """Frames of the load, and frames/s of ``workers`` processes decoding it as extraction's pool does."""
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.extract.workers import worker_context  # not a plain fork of this process: its torch threads have run

    with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
        list(pool.map(_decode_count, paths[:workers]))  # start-up and imports outside the timing
        start = time.perf_counter()
        frames = sum(pool.map(_decode_count, paths))
    return frames, frames / (time.perf_counter() - start)


def decode_only(paths: list[Path], pre: Preprocess | None) -> float:
    torch.set_num_threads(1)  # as in a decoding worker
    frames, start = 0, time.perf_counter()
    for path in paths:
        for chunk in VideoReader(path).chunks():
            if pre is not None:
                preprocess(torch.from_numpy(chunk), pre)
            frames += len(chunk)
    elapsed = time.perf_counter() - start
    torch.set_num_threads(os.cpu_count() or 1)
    return frames / elapsed


def whole_command(root: Path, out: Path, args, short_side: int, precision: str) -> float:
    """Seconds for `mrrn extract` as a user runs it: a new process, imports, workers, cache and all."""
    cmd = [sys.executable, str(REPO / "cli.py"), "extract", "--dataset", "folder", "--root", str(root),
           "--out", str(out), "--backbone-weights", "random", "--short-side", str(short_side), "--crop", str(args.crop),
           "--device", args.device, "--precision", precision, "--quiet"]
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    cmd += ["--workers", str(args.workers)] if args.workers is not None else []
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.1f} min"


def load(tmp: Path, args, clips: int) -> tuple[Path, list[Path], str]:
    """The dataset folder, its videos, and a description of them."""
    root = tmp / "dataset"
    if args.videos is None:
        paths = write_clips(root / "clips", clips, args.frames)
        distinct = min(clips, DISTINCT_CLIPS)
        return root, paths, (f"{clips} UCF-101-like 320x240 MPEG-4 AVIs of {args.frames} frames ({distinct} distinct, "
                             "generated)")
    paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    (root / "clips").mkdir(parents=True)
    for p in paths:
        (root / "clips" / p.name).symlink_to(p.resolve())
    return root, sorted((root / "clips").iterdir()), f"{len(paths)} videos of --videos"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=Path, default=None)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--clips", type=int, default=None)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=None, help="[default: extract's own]")
    ap.add_argument("--workers", type=int, default=None, help="[default: extract's own]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default="fp32,auto",
                    help="extract --precision values to compare, comma-separated (auto: what it picks here)")
    ap.add_argument("--steady", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the load twice over, for the steady rate and the start-up [default: on a GPU]")
    args = ap.parse_args()
    device = resolve_device(args.device)
    precisions = list(dict.fromkeys(extraction_precision(p, device) for p in args.precisions.split(",")))
    clips = args.clips or (1000 if device.type == "cuda" else 60 if args.crop <= 112 else 24)
    with tempfile.TemporaryDirectory() as tmp:
        root, paths, source = load(Path(tmp), args, clips)
        measured = measure(root, paths, Path(tmp), args, device, precisions)
    report(args, device, precisions, source, measured)


def measure(root: Path, paths: list[Path], tmp: Path, args, device, precisions: list[str]) -> dict:
    """Every rate of the report: the whole commands first (and twice over with --steady), then the trunks,
    then the bare forward at the last precision, then decoding."""
    short_side = round(args.crop * 256 / 224)
    steady = device.type == "cuda" if args.steady is None else args.steady
    batch = args.batch_size or default(ExtractConfig, "batch_size")
    workers = args.workers if args.workers is not None else default_workers(device.type)
    frames, pool_fps = decode_pool(paths, max(1, workers))
    seconds = {p: whole_command(root, tmp / f"bench_{p}.h5", args, short_side, p) for p in precisions}
    twice = {p: whole_command(doubled(root, paths, p), tmp / f"bench2_{p}.h5", args, short_side, p)
             for p in precisions} if steady else {}
    trunk = {p: trunk_forward(device, args.crop, batch, frames, p) for p in precisions}
    pre = Preprocess(short_side=short_side, crop=args.crop) if device.type != "cuda" else None
    return dict(frames=frames, pool_fps=pool_fps, seconds=seconds, twice=twice, trunk=trunk, batch=batch,
                workers=workers, short_side=short_side,
                bare=bare_forward(device, args.crop, batch, frames, precisions[-1]),
                decode=decode_only(paths[:DISTINCT_CLIPS], None), decode_pre=decode_only(paths[:DISTINCT_CLIPS], pre))


def precision_rows(m: dict, precision: str, named: bool) -> tuple[list[tuple[str, float]], list[str]]:
    """The trunk's and the whole command's rates at one precision, and the sentences about them."""
    at = f", {precision}" if named else ""
    command_fps, trunk_fps = m["frames"] / m["seconds"][precision], m["trunk"][precision]
    rows = [(f"mrrn's trunk alone (what extract runs, frames already on the device){at}", trunk_fps),
            (f"the whole `mrrn extract` command (new process, decode, preprocess, backbone, cache){at}", command_fps)]
    summary = [f"Whole command / mrrn's trunk{at}: **{command_fps / trunk_fps:.2f}**."]
    twice = m["twice"].get(precision)
    if twice is not None and twice > m["seconds"][precision]:
        steady_fps = m["frames"] / (twice - m["seconds"][precision])
        startup = max(0.0, m["seconds"][precision] - m["frames"] / steady_fps)
        rows.append((f"the whole command's steady rate (the load twice over, minus once){at}", steady_fps))
        summary.append(f"Steady rate / mrrn's trunk{at}: **{steady_fps / trunk_fps:.2f}**; start-up {startup:.1f} s. "
                       f"UCF-101's 2.5 million frames: {duration(startup + UCF101_FRAMES / steady_fps)} projected.")
    else:
        if twice is not None:
            summary.append("(No steady rate: the load twice over took no longer than once; use more --clips.)")
        summary.append(f"UCF-101's 2.5 million frames at the whole command's rate{at}: "
                       f"{duration(UCF101_FRAMES / command_fps)}.")
    return rows, summary


def report(args, device, precisions: list[str], source: str, m: dict) -> None:
    rows, summary = [], []
    for precision in precisions:
        more_rows, more_summary = precision_rows(m, precision, named=len(precisions) > 1)
        rows += more_rows
        summary += more_summary
    last = precisions[-1]
    rows.insert(0, (f"bare ResNet-34 forward (torchvision as built, random tensors of the crop size), {last}", m["bare"]))
    rows += [*([(f"decode only, {m['workers']} workers (the extraction's pool)", m["pool_fps"])] if m["workers"] > 1 else []),
             ("decode only, one worker", m["decode"]),
             (f"decode + preprocess, one worker{' (preprocessing runs on the GPU)' if device.type == 'cuda' else ''}",
              m["decode_pre"])]
    summary.append(f"Whole command / bare forward, {last}: **{m['frames'] / m['seconds'][last] / m['bare']:.2f}**.")
    if len(precisions) > 1:
        first = precisions[0]
        summary.append(f"{last} against {first}, in this run: the trunk **{m['trunk'][last] / m['trunk'][first]:.2f}x**, "
                       f"the whole command **{m['seconds'][first] / m['seconds'][last]:.2f}x**.")
    if device.type == "cpu":
        summary.append(f"This CPU computes bf16 {'natively' if cpu_computes_bf16() else 'only by emulation'} "
                       f"(PyTorch's CPU checks); `--precision auto` picks {extraction_precision('auto', device)} here.")
    append_results(
        f"bench_extract on {device} ({', '.join(precisions)}), {args.crop} px",
        [f"Input: {source}, {m['frames']} frames; short side {m['short_side']}, crop {args.crop}, batch {m['batch']}, "
         + (f"{m['workers']} decoding worker(s)" if m["workers"] else "decoding between batches (no workers)")
         + ", random weights.", "", "| measure | frames/s |", "|---|---|",
         *(f"| {what} | {fps:.1f} |" for what, fps in rows), "", *summary],
    )


if __name__ == "__main__":
    main()
