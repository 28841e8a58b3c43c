"""Kinetics-size caches on one machine: what a commit, a join with nothing new, an extraction's disk and opening
a cache cost as the cache grows. Synthetic caches of about 0.5, 2 and 8 GB (250 frames per video, random
float16, the ResNet-34 levels), built with the project's own part and index writers, as an extraction
commits them (256 videos per part).

    python benchmarks/bench_scale.py [--sizes 0.5,2,8] [--dir DIR] [--table-videos 240000,650000]

Needs about 2.2x the largest size free in --dir (the 8 GB cache and its compacted copy).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_results, timed  # noqa: E402
from pipeline.cache.parts import new_part_name, write_part  # noqa: E402
from pipeline.cache.reader import FeatureCache, VideoRecord, read_identity  # noqa: E402
from pipeline.cache.tables import Contents, now_utc, video_columns, write_index  # noqa: E402
from pipeline.cache.writer import CacheWriter, compact  # noqa: E402
from pipeline.config import ExtractConfig  # noqa: E402
from pipeline.datasets.index import list_videos  # noqa: E402
from pipeline.extract.run import cache_identity  # noqa: E402

FRAMES = 250  # per video: 10 s at 25 fps
PART_VIDEOS = ExtractConfig.commit_every  # videos per part, as an extraction commits them
CLASSES = 400
REPO = Path(__file__).resolve().parents[1]
KINETICS = {"Kinetics-400": (240_000, 60e6), "Kinetics-700": (650_000, 162e6)}  # (videos, frames)


class RandomRows:
    """One video's random rows: slices of a shared random pool, so building gigabytes costs no random draws."""

    pool: dict[str, np.ndarray] = {}

    def __init__(self, seed: int, frames: int):
        self.start, self.frames = (seed * 7919) % (len(next(iter(self.pool.values()))) - frames), frames

    def rows(self, level: str) -> np.ndarray:
        return self.pool[level][self.start : self.start + self.frames]  # (frames, C)

    def reading(self):
        return contextlib.nullcontext(self)


def dataset(root: Path, videos: int) -> list[tuple[str, int]]:
    """``videos`` files in class folders (CLASSES, or fewer so that each has 40), hard links of one tiny AVI
    (an extraction with nothing new lists them and decodes none); returns (key, label) in key order."""
    classes = min(CLASSES, max(2, videos // 40))
    first = root / "c000" / "v000000.avi"
    first.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(first), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (32, 32))
    for _ in range(2):
        writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    for i in range(1, videos):
        path = root / f"c{i % classes:03d}" / f"v{i:06d}.avi"
        path.parent.mkdir(exist_ok=True)
        os.link(first, path)
    return sorted((f"c{i % classes:03d}/v{i:06d}.avi", i % classes) for i in range(videos))


def extract_args(root: Path, out: Path) -> list[str]:
    return ["extract", "--dataset", "folder", "--root", str(root), "--out", str(out), "--backbone-weights", "random",
            "--short-side", "64", "--crop", "64", "--workers", "0", "--quiet"]


def build(path: Path, identity, videos: list[tuple[str, int]], splits: dict) -> None:
    """A cache of ``videos`` (FRAMES each) as extraction commits it: a part per PART_VIDEOS videos, then the index,
    with ``splits`` (those the extraction of the folder lists, so that one with nothing new changes nothing)."""
    parts, placed = (), []
    for start in range(0, len(videos), PART_VIDEOS):
        batch = [(VideoRecord(k, lab, identity.classes[lab], FRAMES, 25.0, 32, 32, FRAMES), RandomRows(i, FRAMES))
                 for i, (k, lab) in enumerate(videos[start : start + PART_VIDEOS], start)]
        part, offsets, digests = write_part(path, new_part_name(path, parts), identity, batch)
        first = sum(p.rows for p in parts)
        parts += (part,)
        placed += [(replace(rec, offset=first + o), d) for (rec, _), o, d in zip(batch, offsets, digests)]
    write_index(path, identity, Contents(video_columns(placed), [], splits, ()), parts, created=now_utc(), commit=1)


def written() -> int:
    """Bytes this process has handed to write calls so far (/proc/self/io wchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def commit_ten(path: Path, identity, first: int) -> tuple[float, int]:
    """(seconds, bytes written) of committing 10 new videos into ``path`` (their journal entries written before;
    the disk's pending writes flushed first, so that the commit's own flushes do not wait for the build's)."""
    with CacheWriter(path, identity) as w:
        for i in range(first, first + 10):
            w.add_video(VideoRecord(f"new/{i:06d}.avi", 0, identity.classes[0], FRAMES, 25.0, 32, 32, FRAMES),
                        {lvl: RandomRows(i, FRAMES).rows(lvl) for lvl in identity.stored_widths})
        os.sync()
        before, start = written(), time.perf_counter()
        w.finish()
        return time.perf_counter() - start, written() - before


def median_of_three(measure) -> tuple[float, int]:
    """The median (seconds, bytes) of ``measure(0)``, ``measure(1)`` and ``measure(2)``, by seconds."""
    return sorted((measure(i) for i in range(3)), key=lambda r: r[0])[1]


def changed_bytes(folder: Path, since: float) -> int:
    """Bytes of the files under ``folder`` created or modified since ``since`` (what a command wrote there)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since)


def nothing_new(root: Path, out: Path) -> tuple[float, int]:
    """(seconds, bytes written) of `mrrn extract --nproc 2` when every video is in the cache."""
    os.sync()
    since = time.time() - 0.01
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), *extract_args(root, out), "--nproc", "2"],
                            capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    assert result.returncode == 0 and "extracted 0 videos" in result.stdout, result.stdout + result.stderr
    return seconds, changed_bytes(out.parent, since)


TRAIN_ARGS = ["--level", "high", "--hidden", "128", "--layers", "1", "--epochs", "1", "--lr", "1e-3", "--quiet"]
CLIPS_PER_VIDEO = 20  # the paper's clips (--max-clips 20, stride 8) of a 250-frame video
TRAIN_NOTE = ("`train " + " ".join(TRAIN_ARGS) + "` on each cache's high level: peak resident memory of the process "
              "(VmRSS) and of its anonymous memory (RssAnon: what it holds, not the libraries mapped from disk), sampled "
              "every 0.1 s; clips/s over the epoch (training and evaluation, the paper's clips: 20 per video; the in-memory "
              "run reads the level before it, a streamed one during it). "
              "Under `--nproc 2`, per rank.")
TRAIN_HEAD = ["| cache (high level) | run | peak RSS | peak anonymous | epoch | clips/s |", "|---|---|---|---|---|---|"]


def measured(cmd: list[str]) -> tuple[dict[int, tuple[int, int]], str]:
    """Run ``cmd``; the peak (VmRSS, RssAnon) in bytes of it and of each process under it, sampled every 0.1 s,
    and its stderr."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[int, int]] = {}
    while proc.poll() is None:
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(OSError, ValueError, KeyError):  # a process ending meanwhile
                status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                rss, anon = (int(status[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon"))
                old = peaks.get(pid, (0, 0))
                peaks[pid] = (max(old[0], rss), max(old[1], anon))
        time.sleep(0.1)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    return peaks, err


def _descendants(pid: int) -> list[int]:
    children = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                children += [int(child), *_descendants(int(child))]
    return children


def train_row(size: float, cache: Path, videos: int, per_rank: bool) -> str:
    """Lines of the training table for one cache: in memory, --max-memory 1G, and (``per_rank``) --nproc 2
    --max-memory 3G."""
    runs = [("in memory", []), ("`--max-memory 1G`", ["--max-memory", "1G"])]
    if per_rank:
        runs.append(("`--nproc 2 --max-memory 3G`", ["--nproc", "2", "--max-memory", "3G"]))
    lines = []
    for name, extra in runs:
        out = cache.parent / f"run{len(lines)}"
        peaks, _ = measured([sys.executable, str(REPO / "cli.py"), "train", "--cache", str(cache), "--out", str(out),
                             *TRAIN_ARGS, *extra])
        metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        clips = videos * CLIPS_PER_VIDEO  # every video's clips, trained or evaluated
        shown = sorted(peaks.values(), key=lambda p: -p[1])[: 2 if "--nproc" in extra else 1]  # the ranks: the largest
        rss, anon = (" / ".join(f"{p[i] / 2**30:.2f} GiB" for p in shown) for i in (0, 1))
        lines.append(f"| {size:g} GB ({videos * FRAMES * 512 * 2 / 2**30:.2f} GiB) | {name} | {rss} | {anon} | "
                     f"{metrics['seconds']:.1f} s | {clips / metrics['seconds']:.0f} |")
        shutil.rmtree(out)
    return "\n".join(lines)


def disk_use(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def fresh_extraction_disk(folder: Path, identity, videos: int) -> tuple[int, int]:
    """(peak, final) bytes on disk while the writer takes ``videos`` new videos through its journal and commits
    every PART_VIDEOS, as an extraction does; the disk is sampled every 5 ms by a thread, so the moment of a
    commit when its part and the journal entries it holds are both on disk is seen."""
    path, peak, done = folder / "fresh.h5", [0], threading.Event()

    def sample():
        while not done.is_set():
            with contextlib.suppress(OSError):  # a file removed while it is counted
                peak[0] = max(peak[0], disk_use(folder))
            time.sleep(0.005)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    with CacheWriter(path, identity, commit_every=(PART_VIDEOS, 3600.0)) as w:
        for i in range(videos):
            w.add_video(VideoRecord(f"c000/{i:06d}.avi", 0, identity.classes[0], FRAMES, 25.0, 32, 32, FRAMES),
                        {lvl: RandomRows(i, FRAMES).rows(lvl) for lvl in identity.stored_widths})
        w.finish()
    done.set()
    watcher.join()
    final = disk_use(folder)
    shutil.rmtree(folder)
    return max(peak[0], final), final


def table_costs(folder: Path, identity, videos: int) -> dict[str, float]:
    """Opening an index of ``videos`` one-frame videos (one part): its identity, a full open, the records;
    and the index rewrite a commit pays."""
    path = folder / f"table{videos}.h5"
    k = len(identity.classes)
    recs = [VideoRecord(f"c{i % k:03d}/v{i:07d}.mp4", i % k, identity.classes[i % k], 1, 25.0, 340, 256, 1)
            for i in range(videos)]
    recs.sort(key=lambda r: r.key)
    big = VideoRecord("all", 0, identity.classes[0], videos, 25.0, 32, 32, videos)
    RandomRows.pool = {lvl: np.resize(rows, (max(videos + 1, len(rows)), rows.shape[1])) for lvl, rows in RandomRows.pool.items()}
    part, _, _ = write_part(path, new_part_name(path, ()), identity, [(big, RandomRows(0, videos))])
    contents = Contents(video_columns([(replace(r, offset=i), "0123456789abcdef") for i, r in enumerate(recs)]),
                        [], {1: ((), ())}, ())
    t_index, _ = timed(lambda: write_index(path, identity, contents, (part,), created=now_utc(), commit=1), repeats=1)
    t_identity, _ = timed(lambda: read_identity(path))

    def full_open():
        with FeatureCache(path) as c:
            return c.version

    def records():
        with FeatureCache(path) as c:
            return len(c.videos)

    t_open, _ = timed(full_open)
    t_records, _ = timed(records, repeats=1)
    out = {"identity": t_identity, "open": t_open, "records": t_records, "index": t_index,
           "index_mb": path.stat().st_size / 1e6}
    shutil.rmtree(path.parent / f"{path.name}.parts")
    path.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5,2,8", help="cache sizes in GB")
    ap.add_argument("--table-videos", default="1000,240000,650000", help="video counts for the opening costs")
    ap.add_argument("--dir", type=Path, default=None, help="where the caches go (default: a temporary folder)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    widths = {"low": 128, "mid": 256, "high": 512}
    RandomRows.pool = {lvl: rng.normal(size=(4096, w)).astype(np.float16) for lvl, w in widths.items()}
    row_bytes = sum(widths.values()) * 2
    lines, base = [], Path(tempfile.mkdtemp(dir=args.dir))
    try:
        sizes = [float(s) for s in args.sizes.split(",")]
        rows = scale_rows(base, sizes, row_bytes)
        lines += rows
        lines += interval_rows(base, row_bytes)
        lines += table_rows(base, [int(v) for v in args.table_videos.split(",")])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    append_results("bench_scale: a cache that grows by parts, from 0.5 to 8 GB", lines)


def _identity(root: Path):
    """The identity `mrrn extract` gives a cache of the folder ``root`` with extract_args, and its split lists."""
    videos = list_videos("folder", root)
    cfg = ExtractConfig(dataset="folder", root=root, out=root / "x.h5", backbone_weights="random", short_side=64, crop=64)
    return cache_identity(cfg, videos, "fp32", "cpu"), videos.splits


def scale_rows(base: Path, sizes: list[float], row_bytes: int) -> list[str]:
    training = []
    table = ["| cache | videos | add 10 videos: commit | bytes written | same, cache written as one file (before 0.3.0) "
             "| bytes written | `extract --nproc 2`, nothing new | bytes written |", "|---|---|---|---|---|---|---|---|"]
    for size in sizes:
        n = int(size * 1e9 / (FRAMES * row_bytes))
        folder = base / f"{size:g}GB"
        videos = dataset(folder / "videos", n)
        identity, splits = _identity(folder / "videos")
        path = folder / "cache.h5"
        build(path, identity, videos, splits)
        t_nothing, b_nothing = nothing_new(folder / "videos", path)
        training.append(train_row(size, path, n, per_rank=size == sizes[-1]))
        t_commit, b_commit = median_of_three(lambda i: commit_ten(path, identity, 10 * i))
        compact(path)  # the single file earlier versions wrote: extended in place of a rewrite
        t_legacy, b_legacy = commit_ten(path, identity, 30)  # once: the next commit would extend an index
        table.append(f"| {size:g} GB | {n} | {t_commit:.2f} s | {b_commit / 1e6:.1f} MB | {t_legacy:.2f} s | "
                     f"{b_legacy / 1e6:.1f} MB | {t_nothing:.1f} s | {b_nothing / 1e6:.2f} MB |")
        shutil.rmtree(folder)
    return [f"Synthetic caches: {FRAMES} frames per video, levels 128/256/512 float16 ({row_bytes * FRAMES / 1e6:.2f} MB "
            f"per video), {PART_VIDEOS} videos per part. Bytes written: what the commit handed to write calls "
            "(/proc/self/io); for `extract`, the size of the files it created or changed beside the cache. "
            "Warm page cache, pending writes flushed before each; the commit into an index is the median of three "
            "(each adding 10 more), the others one run.", ""] + table + ["", TRAIN_NOTE, "", *TRAIN_HEAD, *training, ""]


def interval_rows(base: Path, row_bytes: int) -> list[str]:
    videos = int(2e9 / (FRAMES * row_bytes))
    folder = base / "fresh"
    (folder / "videos").mkdir(parents=True)
    dataset(folder / "videos", 10)
    identity, _ = _identity(folder / "videos")
    peak, final = fresh_extraction_disk(folder, identity, videos)
    return [f"A fresh extraction of {videos} videos ({final / 1e9:.2f} GB) through the journal, committed every "
            f"{PART_VIDEOS} videos: peak disk **{peak / final:.3f}x** the final cache ({peak / 1e9:.2f} GB); "
            f"a resume reads at most {PART_VIDEOS} journal entries ({PART_VIDEOS * FRAMES * row_bytes / 1e6:.0f} MB).", ""]


def table_rows(base: Path, counts: list[int]) -> list[str]:
    folder = base / "tables"
    (folder / "videos").mkdir(parents=True)
    dataset(folder / "videos", CLASSES * 40)  # Kinetics-400's classes
    identity, _ = _identity(folder / "videos")
    table = ["| videos in the cache | read the identity | open (header, tables, parts checked) | build every record "
             "| index rewrite per commit | index size |", "|---|---|---|---|---|---|"]
    for n in counts:
        c = table_costs(folder, identity, n)
        table.append(f"| {n} | {c['identity'] * 1e3:.1f} ms | {c['open']:.3f} s | {c['records']:.2f} s | "
                     f"{c['index']:.2f} s | {c['index_mb']:.1f} MB |")
    return ["Opening an index (best of 3, warm) and rewriting it, by the number of videos it lists:", ""] + table + [""]


if __name__ == "__main__":
    main()
