"""One trial of `mrrn tune`: the settings Optuna chose, trained by the normal ``fit`` into a run directory of
its own (so ``fuse``, ``report`` and ``predict`` read it as any run), reporting its validation video top-1
after every epoch so that the pruner can stop it.

A trial is scored on the validation videos held out of the training videos (``--val-fraction``), never
on the test split. A retried trial (its first attempt was killed) continues the first attempt's run
directory from its last checkpoint. A trial whose choices a finished trial already had is not trained
again: it takes that trial's result (a discrete space's searches repeat configurations).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import optuna
from optuna.trial import TrialState

from pipeline.config import TrainConfig
from pipeline.errors import TrainError, first_line
from pipeline.evaluate.runfiles import DamagedRunFile, read_metrics
from pipeline.train.loop import RunPruned, fit
from pipeline.train.rundir import RunDir
from pipeline.tune.space import SearchSpace, suggest, trial_settings
from pipeline.tune.study import claim

TRIALS_FOLDER = "trials"  # OUT/trials/trial_0007: one run directory per trial
SCORE = "val_video_top1"  # what trials are compared on: validation video top-1
SAME_AS = "same_as"  # user attribute: the number of the finished trial whose choices this one repeats


@dataclasses.dataclass(frozen=True)
class Search:
    """One study: the fixed settings every trial trains with, the space it searches, where its runs and its
    study are."""

    base: TrainConfig  # cache, split, level, validation fraction, seed, device, ...: what no trial chooses
    space: SearchSpace
    out: Path  # the tune folder of this cache: trials/, trials.csv, results.md, plots
    study_name: str
    storage: str | None  # --storage; None: the journal file in the command's --out
    storage_home: Path  # the command's --out (where the default journal is)
    pruner: str
    label: str  # the cache as messages and tables name it
    flow_cache: str | None = None  # twostream trials read it beside the RGB cache


def run_directory(search: Search, trial: optuna.Trial) -> Path:
    """``OUT/trials/trial_NNNN``, numbered by the trial's first attempt: a retry continues that directory."""
    first = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial", trial.number)
    return search.out / TRIALS_FOLDER / f"trial_{first:04d}"


def describe(chosen: dict) -> str:
    """A trial's choice in one short phrase: ``rrn h512 l3 mean, lr 3.2e-05, dropout 0.41, batch 28, 12 epochs``."""
    shape = " ".join(p for p in (chosen["model"], f"h{chosen['hidden']}" if "hidden" in chosen else "",
                                 f"l{chosen['layers']}" if "layers" in chosen else "", chosen.get("pool", "")) if p)
    views = "".join(f", {k.replace('_', ' ')} {chosen[k]}" for k in ("train_views", "test_views") if k in chosen)
    return (f"{shape}, lr {chosen['lr']:.2g}, dropout {chosen['dropout']:.2f}, batch {chosen['batch_size']}, "
            f"{_epochs(chosen['epochs'])}{views}")


def make_objective(search: Search, validation_videos: int, log):
    """Optuna's objective for ``search``: one trial -> its validation video top-1 after its last epoch
    (NaN, a failed trial, when training stopped with an error such as a diverged loss; the search goes on)."""

    def objective(trial: optuna.Trial) -> float:
        claim(trial)
        chosen = suggest(trial, search.space)
        out = run_directory(search, trial)
        cfg = trial_settings(search.base, chosen, str(out), search.flow_cache)
        trial.set_user_attr("run", str(out.relative_to(search.out)))
        trial.set_user_attr("validation_videos", validation_videos)
        retried = _report_finished_epochs(trial, out)
        where = f"trial {trial.number}" + (f" (retry of trial {retried})" if retried is not None else "")
        log(f"{search.label}: {where}: {describe(chosen)}")
        twin = _finished_twin(trial) if retried is None else None
        if twin is not None:
            return _as_twin(trial, twin, lambda m: log(f"{search.label}: {where}: {m}"))
        try:
            summary = fit(cfg, resume=True, progress=False, log=_silent, epoch_lines=False,
                          on_epoch=_pruning(trial, cfg, search.pruner, validation_videos))
        except RunPruned as pruned:
            log(f"{search.label}: {where}: pruned: {pruned} -> {out}")
            raise optuna.TrialPruned(str(pruned)) from None
        except TrainError as err:  # diverged, out of memory, a damaged run file: this trial fails
            trial.set_user_attr("failed", first_line(err))
            log(f"{search.label}: {where}: failed: {first_line(err)}")
            return math.nan
        final = summary.final
        trial.set_user_attr("epochs_run", summary.epochs)
        trial.set_user_attr("test_video_top1", final["video_top1"])  # tables show it for the chosen trial only
        trial.set_user_attr("test_videos", (summary.computed_on or {}).get("test_videos", ""))
        log(f"{search.label}: {where}: val video top-1 {final[SCORE]:.3f} over {validation_videos} validation videos "
            f"after {_epochs(summary.epochs)} -> {out}")
        return float(final[SCORE])

    return objective


def _finished_twin(trial: optuna.Trial):
    """The first finished (complete or pruned) trial of the study with exactly this trial's choices, or None.
    Such choices only recur in a discrete space (no continuous range, or one-value ranges): TPE proposes the
    best-looking configurations again and again there."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if other.number != trial.number and other.params == trial.params:
            return other
    return None


def _as_twin(trial: optuna.Trial, twin, log) -> float:
    """A trial whose choices a finished trial already trained is not trained again: every setting and the
    seed are the same, so it would repeat that run. It takes the twin's result: the twin's score when
    complete; pruned again at once (with the twin's last score) when the twin was pruned."""
    trial.set_user_attr(SAME_AS, twin.number)
    trial.set_user_attr("epochs_run", 0)
    trial.set_user_attr("run", twin.user_attrs.get("run", ""))
    if twin.state == TrialState.PRUNED:
        steps = sorted(twin.intermediate_values)
        if steps:  # the twin's last score, at the twin's last epoch: what the sampler and the tables see
            trial.report(twin.intermediate_values[steps[-1]], steps[-1])
        log(f"the same choices as trial {twin.number}, which was pruned: pruned too, not trained again")
        raise optuna.TrialPruned(f"the same choices as trial {twin.number}, which was pruned")
    for key in ("test_video_top1", "test_videos"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    log(f"the same choices as trial {twin.number}: its val video top-1 {twin.value:.3f}, not trained again")
    return float(twin.value)


def _pruning(trial: optuna.Trial, cfg: TrainConfig, pruner: str, validation_videos: int):
    """``fit``'s ``on_epoch``: report the epoch's validation video top-1 and stop the run when the pruner
    says so (never after the last epoch: a run that trained all its epochs is finished, not pruned)."""

    def on_epoch(epoch: int, metrics: dict) -> None:
        value = float(metrics[SCORE])
        trial.report(value, epoch)
        trial.set_user_attr("epochs_run", epoch)
        if epoch < cfg.epochs and trial.should_prune():
            raise RunPruned(f"val video top-1 {value:.3f} over {validation_videos} validation videos after epoch "
                            f"{epoch} of {cfg.epochs}, below what the {pruner} pruner keeps")

    return on_epoch


def _report_finished_epochs(trial: optuna.Trial, out: Path) -> int | None:
    """For a retried trial, report again the validation accuracy of the epochs its first attempt finished
    (those its last checkpoint holds), so the pruner judges the continued run as a whole; the number of
    the first attempt, or None for a fresh trial."""
    first = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
    if first is None:
        return None
    rundir = RunDir(out)
    try:
        done = rundir.checkpoint_epoch()
        rows = read_metrics(rundir.metrics_file).rows
    except DamagedRunFile:  # fit says what is wrong with it
        return first
    for row in rows:
        if row["epoch"] <= done and SCORE in row:
            trial.report(float(row[SCORE]), row["epoch"])
    return first


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' * (n != 1)}"


def _silent(message: str) -> None:
    pass
