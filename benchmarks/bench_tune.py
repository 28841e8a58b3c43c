"""`mrrn tune`'s pruners on one budget: the same search with no pruner, the median pruner and Hyperband.

    python benchmarks/bench_tune.py [--trials 30] [--epochs 8] [--repeats 4]

The data is generated here: the seeded sample dataset (real videos), extracted at 64 px with a seeded
random ResNet-34 (as the tests do), high level, validation fraction 0.3. Each pruner runs ``--trials``
trials of one space (rrn, hidden 16-128, 1-2 layers, learning rate 1e-4 to 3e-2, dropout 0-0.7, batch 8-32,
``--epochs`` epochs) into a fresh study, ``--repeats`` times with other sampler processes. Reported: wall
time, epochs trained (the budget pruning saves), the best validation video top-1 found, and the test video
top-1 of the chosen configuration (seen here only to check that pruning does not pick worse settings).

Then the search against the grid it replaces (``--grid``): one space of discrete choices (two heads, three widths,
two depths, two poolings: 24 configurations, ``--epochs`` each), trained in full by `mrrn sweep`, against
`mrrn tune` with the median pruner given as many trials as the grid has configurations. Both choose on validation
video top-1; reported: the epochs each trained, the best validation top-1, the chosen configuration's test top-1
and the grid's best test top-1 over all its runs. Last, the same search with ``--workers 2`` against
``--workers 1``, in one run: the speed-up of two worker processes.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_results  # noqa: E402
from pipeline.config import ExtractConfig, TrainConfig  # noqa: E402
from pipeline.train.sweep import SweepAxes, run_sweep  # noqa: E402
from pipeline.datasets.sample import write_sample_dataset  # noqa: E402
from pipeline.extract.run import run_extract  # noqa: E402
from pipeline.tune.run import TuneRequest, run_tune  # noqa: E402
from pipeline.tune.space import SearchSpace  # noqa: E402

PRUNERS = ("none", "median", "hyperband")


def sample_cache(folder: Path) -> Path:
    write_sample_dataset(folder / "sample", seed=0)
    cache = folder / "sample.h5"
    run_extract(ExtractConfig(dataset="ucf101", root=folder / "sample" / "videos", out=cache,
                              splits=folder / "sample" / "ucfTrainTestlist", backbone_weights="random", seed=0,
                              batch_size=16, workers=1, short_side=64, crop=64), progress=False, log=lambda m: None)
    return cache


def one_search(cache: Path, out: Path, pruner: str, trials: int, epochs: int) -> dict:
    base = TrainConfig(cache=str(cache), out=str(out), level="high", val_fraction=0.3, normalize=True, device="cpu")
    space = SearchSpace(hiddens=(16, 32, 64, 128), layers=(1, 2), lr_range=(1e-4, 3e-2), dropout_range=(0.0, 0.7),
                        batch_sizes=(8, 16, 32), epochs=(epochs,))
    started = time.perf_counter()
    run_tune(TuneRequest(base=base, caches=(str(cache),), space=space, out=out, trials=trials, pruner=pruner),
             log=lambda m: None)
    seconds = time.perf_counter() - started
    rows = list(csv.DictReader(open(out / "trials.csv")))
    chosen = next(r for r in rows if r["chosen"] == "yes")
    return {"seconds": seconds, "epochs": sum(int(r["epochs_run"] or 0) for r in rows),
            "pruned": sum(r["state"] == "pruned" for r in rows), "val": float(chosen["val_video_top1"]),
            "test": float(chosen["test_video_top1"]), "validation_videos": chosen["validation_videos"],
            "test_videos": chosen["test_videos"]}


GRID = dict(models=("rrn", "lstm"), hiddens=(32, 64, 128), layers=(1, 2), pools=("mean", "max"))
GRID_LR, GRID_DROPOUT, GRID_BATCH = 1e-3, 0.5, 16  # the settings the grid holds fixed (and so does the search)


def _base(cache: Path, out: Path, epochs: int) -> TrainConfig:
    return TrainConfig(cache=str(cache), out=str(out), level="high", val_fraction=0.3, normalize=True, device="cpu",
                       lr=GRID_LR, dropout=GRID_DROPOUT, batch_size=GRID_BATCH, epochs=epochs,
                       lr_step_epochs=max(1, round(epochs * 8 / 12)))  # where tune's trials drop the rate too


def full_grid(cache: Path, out: Path, epochs: int) -> dict:
    """Every configuration of GRID trained for ``epochs`` by `mrrn sweep`: the chosen one by validation."""
    started = time.perf_counter()
    rows = run_sweep(_base(cache, out, epochs), out, SweepAxes(**GRID), progress=False, log=lambda m: None)
    seconds = time.perf_counter() - started
    val = {r["run"]: json.loads((out / r["run"] / "metrics.jsonl").read_text().splitlines()[-1])["val_video_top1"]
           for r in rows}
    chosen = max(rows, key=lambda r: val[r["run"]])
    return {"seconds": seconds, "configurations": len(rows), "epochs": sum(int(r["epochs"]) for r in rows),
            "val": val[chosen["run"]], "test": float(chosen["video_top1"]),
            "best_test": max(float(r["video_top1"]) for r in rows)}


def grid_search(cache: Path, out: Path, trials: int, epochs: int, workers: int) -> dict:
    """`mrrn tune` over GRID's choices, median pruner, ``trials`` trials on ``workers`` worker processes."""
    space = SearchSpace(models=GRID["models"], hiddens=GRID["hiddens"], layers=GRID["layers"], pools=GRID["pools"],
                        lr_range=(GRID_LR, GRID_LR), dropout_range=(GRID_DROPOUT, GRID_DROPOUT),
                        batch_sizes=(GRID_BATCH,), epochs=(epochs,))
    started = time.perf_counter()
    run_tune(TuneRequest(base=_base(cache, out, epochs), caches=(str(cache),), space=space, out=out, trials=trials,
                         workers=workers, pruner="median"), log=lambda m: None)
    seconds = time.perf_counter() - started
    rows = list(csv.DictReader(open(out / "trials.csv")))
    chosen = next(r for r in rows if r["chosen"] == "yes")
    return {"seconds": seconds, "epochs": sum(int(r["epochs_run"] or 0) for r in rows),
            "val": float(chosen["val_video_top1"]), "test": float(chosen["test_video_top1"]),
            "pruned": sum(r["state"] == "pruned" for r in rows)}


def grid_lines(cache: Path, tmp: Path, epochs: int) -> list[str]:
    grid = full_grid(cache, tmp / "grid", epochs)
    n = grid["configurations"]
    one, two = (grid_search(cache, tmp / f"tune_w{w}", n, epochs, w) for w in (1, 2))
    lines = ["", f"The grid against the search it replaces: {n} configurations ({', '.join(GRID['models'])} x hidden "
             f"{'/'.join(map(str, GRID['hiddens']))} x layers {'/'.join(map(str, GRID['layers']))} x "
             f"{'/'.join(GRID['pools'])} pooling; lr {GRID_LR:g}, dropout {GRID_DROPOUT:g}, batch {GRID_BATCH}), "
             f"{epochs} epochs each; `mrrn tune` with the median pruner and {n} trials over the same choices. Both "
             "choose on validation video top-1; test video top-1 over the 32 test videos:", "",
             "| search | wall s | epochs trained | share of the grid's epochs | best val top-1 (%) | chosen's test top-1 (%) "
             "| grid's best test top-1 (%), any run |", "|---|---|---|---|---|---|---|",
             f"| full grid (`mrrn sweep`) | {grid['seconds']:.1f} | {grid['epochs']} | 100% | {100 * grid['val']:.1f} | "
             f"{100 * grid['test']:.1f} | {100 * grid['best_test']:.1f} |"]
    for workers, r in ((1, one), (2, two)):
        lines.append(f"| `mrrn tune --pruner median --workers {workers}` ({r['pruned']} pruned) | {r['seconds']:.1f} | "
                     f"{r['epochs']} | {100 * r['epochs'] / grid['epochs']:.0f}% | {100 * r['val']:.1f} | "
                     f"{100 * r['test']:.1f} | |")
    rate = [r["epochs"] / r["seconds"] for r in (one, two)]  # epochs trained per second of the whole command
    lines += ["", f"Two workers against one, in this run: {rate[1] / rate[0]:.2f}x the epochs trained per second "
              f"({rate[0]:.1f} against {rate[1]:.1f}; wall {one['seconds']:.1f} s and {two['seconds']:.1f} s for trials "
              "that differ, as the samplers do); two processes of one thread each against one of two threads."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--no-pruners", dest="pruners", action="store_false", help="Skip the pruners' comparison.")
    parser.add_argument("--no-grid", dest="grid", action="store_false", help="Skip the grid against the search.")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = sample_cache(Path(tmp))
        if args.pruners:
            lines += pruner_lines(cache, Path(tmp), args)
        if args.grid:
            lines += grid_lines(cache, Path(tmp), args.epochs)
    append_results("mrrn tune: pruners, the grid against the search, workers (bench_tune.py)", lines)


def pruner_lines(cache: Path, tmp: Path, args) -> list[str]:
    results = {p: [one_search(cache, tmp / f"{p}_{i}", p, args.trials, args.epochs)
                   for i in range(args.repeats)] for p in PRUNERS}
    first = results["none"][0]
    lines = [f"{args.trials} trials of {args.epochs} epochs each, {args.repeats} searches per pruner; sample dataset, "
             f"high level, validation video top-1 over {first['validation_videos']} validation videos, test video "
             f"top-1 of the chosen configuration over {first['test_videos']} test videos (medians over the searches):",
             "", "| pruner | wall s | epochs trained | trials pruned | best val top-1 (%) | chosen's test top-1 (%) |",
             "|---|---|---|---|---|---|"]
    for pruner, runs in results.items():
        def median(key):
            return statistics.median(r[key] for r in runs)
        lines.append(f"| {pruner} | {median('seconds'):.1f} | {median('epochs'):.0f} of {args.trials * args.epochs} | "
                     f"{median('pruned'):.0f} | {100 * median('val'):.1f} | {100 * median('test'):.1f} |")
    return lines


if __name__ == "__main__":
    main()
