"""`mrrn tune`'s pruners on one budget, and the search against the grid it replaces.

    python benchmarks/bench_tune.py [--trials 30] [--epochs 8] [--repeats 4] [--clips-per-group 6]
    python benchmarks/bench_tune.py --no-pruners --epochs 30 --repeats 5      # the grid against the search

The data is generated here: the seeded sample dataset (real videos; six of its eight classes come in pairs
that only frame order tells apart) with ``--clips-per-group`` videos per group (6: 240 videos, three times
the demo's; 2 is the demo's own), extracted at 64 px with a seeded random ResNet-34 (as the tests do), high
level, validation fraction 0.3, in float32 (extraction and training: the figures do not move with the
default precision). Each search's repeats differ in the sampler's seed alone (``TuneRequest.sampler_seed``):
the training of a configuration is the same in every repeat, so the repeats show what the search's own
choices do.

Pruners: each runs ``--trials`` trials of one space (rrn, hidden 16-128, 1-2 layers, learning rate 1e-4 to
3e-2, dropout 0-0.7, batch 8-32, ``--epochs`` epochs) into a fresh study, ``--repeats`` times. Reported: wall
time, epochs trained (the budget pruning saves), the best validation video top-1 found, and the test video
top-1 of the chosen configuration (seen here only to check that pruning does not pick worse settings).

The grid (``--grid``): one space of discrete choices (two heads, three widths, two depths, two poolings: 24
configurations, ``--epochs`` each), trained in full by `mrrn sweep` once, against `mrrn tune` with the median
pruner given as many trials as the grid has configurations, ``--repeats`` times. Both choose on validation
video top-1. The target: the search's chosen configuration within 2 points of the test video top-1 of the
grid's chosen one, with at most 40% of the grid's epochs, as the median over the repeats (each repeat, the
medians, their least and most). Shown too: the grid's best test top-1 over all its runs (which nothing can
choose without looking at the test split). Last, the same search with ``--workers 2`` against the first
repeat's ``--workers 1``: the speed-up of two worker processes.
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


PRECISION = "fp32"  # extraction and training: the figures do not move with the default precision
TARGET_POINTS, TARGET_SHARE = 2.0, 0.40  # within 2 points of the grid's chosen test top-1, at most 40% of its epochs


def sample_cache(folder: Path, clips_per_group: int) -> Path:
    write_sample_dataset(folder / "sample", seed=0, clips_per_group=clips_per_group)
    cache = folder / "sample.h5"
    run_extract(ExtractConfig(dataset="ucf101", root=folder / "sample" / "videos", out=cache,
                              splits=folder / "sample" / "ucfTrainTestlist", backbone_weights="random", seed=0,
                              batch_size=16, workers=1, short_side=64, crop=64, precision=PRECISION),
                progress=False, log=lambda m: None)
    return cache


def one_search(cache: Path, out: Path, pruner: str, trials: int, epochs: int, sampler_seed: int) -> dict:
    base = TrainConfig(cache=str(cache), out=str(out), level="high", val_fraction=0.3, normalize=True, device="cpu",
                       precision=PRECISION)
    space = SearchSpace(hiddens=(16, 32, 64, 128), layers=(1, 2), lr_range=(1e-4, 3e-2), dropout_range=(0.0, 0.7),
                        batch_sizes=(8, 16, 32), epochs=(epochs,))
    started = time.perf_counter()
    run_tune(TuneRequest(base=base, caches=(str(cache),), space=space, out=out, trials=trials, pruner=pruner,
                         sampler_seed=sampler_seed), log=lambda m: None)
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
                       precision=PRECISION, lr=GRID_LR, dropout=GRID_DROPOUT, batch_size=GRID_BATCH, epochs=epochs,
                       lr_step_epochs=max(1, round(epochs * 8 / 12)))  # where tune's trials drop the rate too


def full_grid(cache: Path, out: Path, epochs: int) -> dict:
    """Every configuration of GRID trained for ``epochs`` by `mrrn sweep`: the chosen one by validation."""
    started = time.perf_counter()
    rows = run_sweep(_base(cache, out, epochs), out, SweepAxes(**GRID), progress=False, log=lambda m: None)
    seconds = time.perf_counter() - started
    last = {r["run"]: json.loads((out / r["run"] / "metrics.jsonl").read_text().splitlines()[-1]) for r in rows}
    chosen = max(rows, key=lambda r: last[r["run"]]["val_video_top1"])  # the first of equals, in the grid's order
    return {"seconds": seconds, "configurations": len(rows), "epochs": sum(int(r["epochs"]) for r in rows),
            "val": last[chosen["run"]]["val_video_top1"], "test": float(chosen["video_top1"]),
            "tests": [float(r["video_top1"]) for r in rows], "chosen": chosen["run"].split("_", 1)[1]}


def grid_search(cache: Path, out: Path, trials: int, epochs: int, *, workers: int, sampler_seed: int) -> dict:
    """`mrrn tune` over GRID's choices, median pruner, ``trials`` trials on ``workers`` worker processes."""
    space = SearchSpace(models=GRID["models"], hiddens=GRID["hiddens"], layers=GRID["layers"], pools=GRID["pools"],
                        lr_range=(GRID_LR, GRID_LR), dropout_range=(GRID_DROPOUT, GRID_DROPOUT),
                        batch_sizes=(GRID_BATCH,), epochs=(epochs,))
    started = time.perf_counter()
    run_tune(TuneRequest(base=_base(cache, out, epochs), caches=(str(cache),), space=space, out=out, trials=trials,
                         workers=workers, pruner="median", sampler_seed=sampler_seed), log=lambda m: None)
    seconds = time.perf_counter() - started
    rows = list(csv.DictReader(open(out / "trials.csv")))
    chosen = next(r for r in rows if r["chosen"] == "yes")
    trained = [r for r in rows if int(r["epochs_run"] or 0) > 0]
    return {"seconds": seconds, "epochs": sum(int(r["epochs_run"] or 0) for r in rows),
            "val": float(chosen["val_video_top1"]), "test": float(chosen["test_video_top1"]),
            "pruned": sum(r["state"] == "pruned" for r in trained), "trained": len(trained),
            "repeated": len(rows) - len(trained), "chosen": "{model}_h{hidden}_l{layers}_{pool}".format(**chosen),
            "test_videos": chosen["test_videos"], "validation_videos": chosen["validation_videos"]}


def grid_lines(cache: Path, tmp: Path, epochs: int, repeats: int) -> list[str]:
    grid = full_grid(cache, tmp / "grid", epochs)
    n = grid["configurations"]
    near = sum(100 * (t - grid["test"]) >= -TARGET_POINTS for t in grid["tests"])
    runs = [grid_search(cache, tmp / f"tune_{i}", n, epochs, workers=1, sampler_seed=i) for i in range(repeats)]
    two = grid_search(cache, tmp / "tune_w2", n, epochs, workers=2, sampler_seed=0)
    for r in runs:
        r["share"], r["points"] = r["epochs"] / grid["epochs"], 100 * (r["test"] - grid["test"])
        r["met"] = r["points"] >= -TARGET_POINTS and r["share"] <= TARGET_SHARE
    lines = ["", f"The grid against the search it replaces: {n} configurations ({', '.join(GRID['models'])} x hidden "
             f"{'/'.join(map(str, GRID['hiddens']))} x layers {'/'.join(map(str, GRID['layers']))} x "
             f"{'/'.join(GRID['pools'])} pooling; lr {GRID_LR:g}, dropout {GRID_DROPOUT:g}, batch {GRID_BATCH}), "
             f"{epochs} epochs each, trained once by `mrrn sweep`; `mrrn tune` with the median pruner and {n} trials over "
             f"the same choices, {repeats} times (sampler seeds 0-{repeats - 1}). Both choose on validation video top-1 "
             f"over {runs[0]['validation_videos']} validation videos; test video top-1 over {runs[0]['test_videos']} "
             f"test videos. The grid chose {grid['chosen']}: val {100 * grid['val']:.1f}%, test "
             f"**{100 * grid['test']:.1f}%**; its best test top-1 over all its runs: {100 * max(grid['tests']):.1f}% "
             f"(chosen by nothing); wall {grid['seconds']:.1f} s, {grid['epochs']} epochs. Its runs' test top-1 range "
             f"from {100 * min(grid['tests']):.1f}% to {100 * max(grid['tests']):.1f}% (median "
             f"{100 * statistics.median(grid['tests']):.1f}%); {near} of the {n} are within {TARGET_POINTS:g} points of "
             "the chosen one's, the odds of a configuration drawn blindly.", "",
             "| search | wall s | epochs trained | share of the grid's epochs | configurations trained (pruned) "
             "| trials not trained again | best val top-1 (%) | chosen | chosen's test top-1 (%) "
             "| against the grid's chosen (points) | target met |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        lines.append(f"| `mrrn tune`, sampler seed {i} | {r['seconds']:.1f} | {r['epochs']} | {100 * r['share']:.0f}% | "
                     f"{r['trained']} ({r['pruned']}) | {r['repeated']} | {100 * r['val']:.1f} | {r['chosen']} | "
                     f"{100 * r['test']:.1f} | {r['points']:+.1f} | {'yes' if r['met'] else 'no'} |")
    lines.append(_medians(runs))
    met = sum(r["met"] for r in runs)
    share, points = (statistics.median(r[k] for r in runs) for k in ("share", "points"))
    verdict = "met" if share <= TARGET_SHARE and points >= -TARGET_POINTS else "not met"
    lines += ["", f"Target (within {TARGET_POINTS:g} points of the grid's chosen test top-1 with at most "
              f"{100 * TARGET_SHARE:.0f}% of its epochs), on the medians: **{verdict}** ({100 * share:.0f}% of the "
              f"epochs, {points:+.1f} points); {met} of {repeats} repeats meet both on their own."]
    return lines + _workers_line(runs[0], two)


def _medians(runs: list[dict]) -> str:
    def cell(key, scale=1.0, form="{:.0f}"):
        values = [scale * r[key] for r in runs]
        return (form.format(statistics.median(values)) + " (" + form.format(min(values)) + " to "
                + form.format(max(values)) + ")")
    return (f"| median (least to most) | {cell('seconds', form='{:.1f}')} | {cell('epochs')} | {cell('share', 100)}% | "
            f"{cell('trained')} | {cell('repeated')} | {cell('val', 100, '{:.1f}')} | | {cell('test', 100, '{:.1f}')} | "
            f"{cell('points', form='{:+.1f}')} | |")


def _workers_line(one: dict, two: dict) -> list[str]:
    rate = [r["epochs"] / r["seconds"] for r in (one, two)]  # epochs trained per second of the whole command
    return ["", f"`--workers 2` against `--workers 1` (sampler seed 0 both): {two['epochs']} epochs in "
            f"{two['seconds']:.1f} s (chosen's test top-1 {100 * two['test']:.1f}%), {rate[1] / rate[0]:.2f}x the epochs "
            f"trained per second ({rate[0]:.1f} against {rate[1]:.1f}); two processes of one thread each against one of "
            "two threads, whose trials differ: two workers' proposals depend on which trial finishes first."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--clips-per-group", type=int, default=6, help="Videos per class and group (the demo's: 2).")
    parser.add_argument("--no-pruners", dest="pruners", action="store_false", help="Skip the pruners' comparison.")
    parser.add_argument("--no-grid", dest="grid", action="store_false", help="Skip the grid against the search.")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cache = sample_cache(Path(tmp), args.clips_per_group)
        lines += [f"Sample dataset with {args.clips_per_group} videos per class and group, extracted in "
                  f"{time.perf_counter() - started:.1f} s."]
        if args.pruners:
            lines += pruner_lines(cache, Path(tmp), args)
        if args.grid:
            lines += grid_lines(cache, Path(tmp), args.epochs, args.repeats)
    append_results("mrrn tune: pruners, the grid against the search, workers (bench_tune.py)", lines)


def pruner_lines(cache: Path, tmp: Path, args) -> list[str]:
    results = {p: [one_search(cache, tmp / f"{p}_{i}", p, args.trials, args.epochs, i)
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
