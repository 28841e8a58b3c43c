"""What `mrrn tune` writes: ``trials.csv`` (every trial: its settings, the epochs it used, its validation
score), ``results.md`` (the chosen configuration with its test score, then every trial) and Optuna's
matplotlib plots (optimisation history, parameter importances, parallel coordinates).

Trials are compared on validation video top-1 only. The test score is shown for the chosen configuration
alone (the trial with the best validation score), and said to be so: every other trial's test column is
empty, so that the table cannot be used to pick a configuration on the test split.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import warnings
from pathlib import Path

from optuna.trial import TrialState

from pipeline.atomic import write_text
from pipeline.errors import first_line, writing
from pipeline.train.sweep import csv_table, percent
from pipeline.tune.trial import SAME_AS, Search

PARAMS = ("model", "hidden", "layers", "pool", "lr", "dropout", "batch_size", "epochs", "train_views", "test_views")
COLUMNS = ("cache", "trial", "state", *PARAMS, "epochs_run", "val_video_top1", "validation_videos",
           "test_video_top1", "test_videos", "chosen", "run", "note")
PLOTS = {"optimization_history.png": "plot_optimization_history", "param_importances.png": "plot_param_importances",
         "parallel_coordinate.png": "plot_parallel_coordinate"}
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
TABLES_LOCK = ".tables.lock"


def trial_rows(search: Search, study) -> list[dict]:
    """A row per trial of the study, in trial order; the best complete one is the chosen configuration."""
    trials = study.get_trials(deepcopy=False)
    scored = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    chosen = max(scored, key=lambda t: (t.value, -t.number)) if scored else None
    finished = {t.number for t in scored}
    rows = []
    for t in trials:
        is_chosen = chosen is not None and t.number == chosen.number
        steps = sorted(t.intermediate_values)
        value = t.value if t.number in finished else (t.intermediate_values[steps[-1]] if steps else "")
        rows.append({"cache": search.label, "trial": t.number, "state": STATES.get(t.state, t.state.name.lower()),
                     **{p: _param(t.params.get(p, "")) for p in PARAMS},
                     "epochs_run": t.user_attrs.get("epochs_run", steps[-1] if steps else 0),
                     "val_video_top1": round(value, 4) if value != "" else "",
                     "validation_videos": t.user_attrs.get("validation_videos", ""),
                     "test_video_top1": round(t.user_attrs["test_video_top1"], 4) if is_chosen else "",
                     "test_videos": t.user_attrs.get("test_videos", "") if is_chosen else "",
                     "chosen": "yes" if is_chosen else "", "run": t.user_attrs.get("run", ""), "note": _note(t)})
    return rows


def _param(value):
    return f"{value:.3g}" if isinstance(value, float) else value


def _note(t) -> str:
    """Why a trial has no final score or was not trained: pruned, failed (and why), a retry of a killed trial,
    the same choices as an earlier trial."""
    attrs = t.system_attrs
    retry = f"retry of trial {attrs['failed_trial']}" if "failed_trial" in attrs else ""
    same = f"the same choices as trial {t.user_attrs[SAME_AS]}: its result, not trained again" \
        if SAME_AS in t.user_attrs else ""
    if t.state == TrialState.FAIL:
        why = t.user_attrs.get("failed") or "its process ended mid-way; queued again"
        return "; ".join(p for p in (retry, f"failed: {why}") if p)
    if t.state == TrialState.PRUNED:
        return "; ".join(p for p in (retry, same, "pruned (val video top-1 is that of its last epoch)") if p)
    return "; ".join(p for p in (retry, same) if p)


def write_outputs(search: Search, study, log) -> list[dict]:
    """trials.csv, results.md and the plots in ``search.out``, under a lock: several commands sharing the
    study each write them when they finish, whole, one at a time (the last one lists every trial)."""
    rows = trial_rows(search, study)
    with tables_lock(search.out):
        write_text(search.out / "trials.csv", csv_text(rows))
        notes = draw_plots(study, search.out)
        write_text(search.out / "results.md", markdown(search, rows, notes))
    return rows


@contextlib.contextmanager
def tables_lock(folder: Path):
    path = folder / TABLES_LOCK
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # waits for another command writing the tables now
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


def csv_text(rows: list[dict]) -> str:
    return csv_table(rows, COLUMNS)


def draw_plots(study, folder: Path) -> list[str]:
    """Optuna's matplotlib plots of ``study`` into ``folder``; a line for each one that cannot be drawn yet
    (too few complete trials, or a single value per parameter for importances)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots

    from optuna.importance import PedAnovaImportanceEvaluator

    notes = []
    for name, function in PLOTS.items():
        # importances by PED-ANOVA (numpy alone; Optuna's default, fANOVA, needs scikit-learn)
        extra = {"evaluator": PedAnovaImportanceEvaluator()} if function == "plot_param_importances" else {}
        try:
            with warnings.catch_warnings():  # matplotlib's about axes of one value: nothing a user can act on
                warnings.simplefilter("ignore")
                ax = getattr(plots, function)(study, **extra)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            figure.set_size_inches(9, 6)
            figure.tight_layout()
            figure.savefig(folder / name, dpi=100)
            plt.close(figure)
        except Exception as err:  # Optuna refuses plots of too few trials in its own words
            (folder / name).unlink(missing_ok=True)
            notes.append(f"{name} is not drawn: {first_line(err)}")
    return notes


def markdown(search: Search, rows: list[dict], notes: list[str]) -> str:
    """The chosen configuration (with its test score, the only one shown), then every trial."""
    base = search.base
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed", "running", "waiting")}
    videos = next((r["validation_videos"] for r in rows if r["validation_videos"] != ""), "?")
    out = [f"# mrrn tune: {search.study_name}", "",
           f"Cache {search.label}, split {base.split}, {base.level} level; {len(rows)} trials ("
           + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f"). Trials are compared on validation video "
           f"top-1 over {videos} validation videos held out of the training videos (--val-fraction "
           f"{base.val_fraction:g}), never on the test split; pruner: {search.pruner}.", ""]
    chosen = next((r for r in rows if r["chosen"]), None)
    out += _chosen(chosen) if chosen else ["No trial has finished yet: there is no chosen configuration.", ""]
    out += ["## Trials", "", "Video top-1 (%) on the validation videos; for a pruned trial, at the epoch it stopped.",
            "", "| trial | state | model | hidden | layers | pool | lr | dropout | batch | epochs | epochs run "
            "| val top-1 | run | note |", "|" + "---|" * 14]
    for r in rows:
        out.append(f"| {r['trial']}{' (chosen)' if r['chosen'] else ''} | {r['state']} | {r['model']} | {r['hidden']} | "
                   f"{r['layers']} | {r['pool'] or '-'} | {r['lr']} | {r['dropout']} | {r['batch_size']} | "
                   f"{r['epochs']} | {r['epochs_run']} | {percent(r['val_video_top1'])} | {r['run']} | {r['note']} |")
    drawn = [name for name in PLOTS if (search.out / name).is_file()]
    out += [""] + [f"![{name[:-4].replace('_', ' ')}]({name})" for name in drawn] + [f"{n}." for n in notes]
    return "\n".join(out) + "\n"


def _chosen(r: dict) -> list[str]:
    settings = ", ".join(f"{p.replace('_', ' ')} {r[p]}" for p in PARAMS if r[p] != "")
    tested = f", over {r['test_videos']} videos" if r["test_videos"] != "" else ""
    return ["## Chosen configuration", "",
            f"Trial {r['trial']} ({r['run']}): {settings}.", "",
            "| | video top-1 (%) |", "|---|---|",
            f"| validation (what chose it), over {r['validation_videos']} videos | {percent(r['val_video_top1'])} |",
            f"| test (this chosen configuration only){tested} | {percent(r['test_video_top1'])} |", "",
            "The test score is reported for the chosen configuration only; no trial was chosen or pruned on it.", ""]


def overview(results: list[tuple[Search, list[dict]]]) -> str:
    """With several caches: the chosen configuration of each, side by side (OUT/results.md)."""
    out = ["# mrrn tune: the chosen configuration per cache", "",
           "Each cache was searched in a study of its own; trials were compared on validation video top-1, and the "
           "test score is that of each cache's chosen configuration only.", "",
           "| cache | trials | chosen trial | settings | val top-1 (%) | test top-1 (%), chosen only | results |",
           "|---|---|---|---|---|---|---|"]
    for search, rows in results:
        r = next((r for r in rows if r["chosen"]), None)
        settings = ", ".join(f"{p.replace('_', ' ')} {r[p]}" for p in PARAMS if r[p] != "") if r else "-"
        val = f"{percent(r['val_video_top1'])} over {r['validation_videos']} videos" if r else ""
        test = f"{percent(r['test_video_top1'])} over {r['test_videos']} videos" if r else ""
        out.append(f"| {search.label} | {len(rows)} | {r['trial'] if r else '-'} | {settings} | {val} | {test} | "
                   f"{search.out.name}/results.md |")
    return "\n".join(out) + "\n"
