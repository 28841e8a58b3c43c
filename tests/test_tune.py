"""mrrn tune: Optuna trials as run directories, scored on validation videos, pruned, resumed after kill -9,
shared by two commands at once, on a journal file, SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.conftest import one_line_error, run

REPO = Path(__file__).resolve().parents[1]
# tiny trials: two hidden sizes, one layer, 1-2 epochs, a rate that learns on the sample's random-weight features
TINY = ("--hidden", "16,32", "--layers", "1", "--epochs", "1,2", "--batch-size", "16", "--lr-range", "1e-3,1e-2",
        "--normalize", "--max-clips", "4")


def tune(cache, out, *more):
    return run("tune", "--cache", cache, "--level", "high", "--out", out, *TINY, *more)


def rows(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "trials.csv")))


def study_of(storage, out: Path | None = None):
    """The one study of a storage: a URL, or the journal file of a tune folder."""
    if out is not None:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    [summary] = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def test_tune_writes_a_run_per_trial_and_shows_the_test_score_of_the_chosen_one_only(sample_cache, tmp_path):
    out = tmp_path / "tune"
    result = tune(sample_cache, out, "--trials", "3", "--pruner", "none")
    assert result.exit_code == 0, result.output
    table = rows(out)
    assert [r["trial"] for r in table] == ["0", "1", "2"] and {r["state"] for r in table} == {"complete"}
    chosen = [r for r in table if r["chosen"] == "yes"]
    assert len(chosen) == 1 and chosen[0]["val_video_top1"] == str(max(float(r["val_video_top1"]) for r in table))
    assert [r["test_video_top1"] for r in table if r["chosen"] != "yes"] == ["", ""]  # never shown but for the chosen
    assert float(chosen[0]["test_video_top1"]) >= 0 and int(chosen[0]["validation_videos"]) > 0
    for r in table:  # each trial is a finished run of its own settings, scored on held-out validation videos
        record = json.loads((out / r["run"] / "config.json").read_text())["train"]
        assert record["val_fraction"] == 0.2 and record["hidden"] == int(r["hidden"])
        assert record["epochs"] == int(r["epochs"]) == int(r["epochs_run"])
        metrics = [json.loads(line) for line in (out / r["run"] / "metrics.jsonl").read_text().splitlines()]
        assert float(r["val_video_top1"]) == pytest.approx(metrics[-1]["val_video_top1"], abs=1e-4)
    md = (out / "results.md").read_text()
    assert "## Chosen configuration" in md and "test (this chosen configuration only)" in md
    assert f"over {chosen[0]['validation_videos']} validation videos" in md and "never on the test split" in md
    assert (out / "optimization_history.png").is_file() and (out / "parallel_coordinate.png").is_file()
    assert json.loads((out / "made_by.json").read_text())["kind"] == "tune"

    again = tune(sample_cache, out, "--trials", "1", "--pruner", "none")  # the same command continues its study
    assert again.exit_code == 0, again.output
    assert "continuing after 3 trials" in again.stderr and len(rows(out)) == 4


def test_trial_runs_are_read_by_report_fuse_and_predict(sample_cache, sample_dir, tmp_path):
    out = tmp_path / "tune"
    assert tune(sample_cache, out, "--trials", "2", "--pruner", "none").exit_code == 0
    runs = [out / r["run"] for r in rows(out)]
    assert run("report", runs[0]).exit_code == 0
    fused = run("fuse", *runs, "--method", "sum", "--out", tmp_path / "fused")
    assert fused.exit_code == 0, fused.output
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    predicted = run("predict", video, "--runs", runs[0], "--json")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)[0]["top"]


def test_a_pruned_trial_s_run_directory_says_so_and_resume_would_finish_it(sample_cache, tmp_path):
    from pipeline.config import TrainConfig
    from pipeline.tune.space import SearchSpace
    from pipeline.tune.study import open_storage
    from pipeline.tune.tables import write_outputs
    from pipeline.tune.trial import Search, make_objective

    class PruneAfterTheFirstEpoch(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return max(trial.intermediate_values, default=0) >= 1

    base = TrainConfig(cache=str(sample_cache), out=str(tmp_path), level="high", val_fraction=0.2, normalize=True)
    space = SearchSpace(hiddens=(16,), layers=(1,), epochs=(3,), batch_sizes=(16,), lr_range=(1e-3, 1e-3))
    search = Search(base=base, space=space, out=tmp_path, study_name="pruning", storage=None, storage_home=tmp_path,
                    pruner="median", label="sample")
    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="pruning", direction="maximize",
                                pruner=PruneAfterTheFirstEpoch())
    study.optimize(make_objective(search, 4, log=lambda m: None), n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    trial_dir = tmp_path / "trials" / "trial_0000"
    mark = json.loads((trial_dir / "pruned.json").read_text())
    assert (mark["epoch"], mark["epochs"]) == (1, 3) and "pruner" in mark["reason"]
    assert not (trial_dir / "summary.json").exists() and (trial_dir / "last.pt").is_file()
    one_line_error(run("report", trial_dir), "pruned by `mrrn tune` after epoch 1 of 3", "--resume")
    [row] = write_outputs(search, study, log=lambda m: None)
    assert row["state"] == "pruned" and row["epochs_run"] == 1 and "pruned" in row["note"]
    resumed = run("train", "--cache", sample_cache, "--level", "high", "--out", trial_dir, "--resume", "--quiet",
                  "--hidden", "16", "--layers", "1", "--epochs", "3", "--batch-size", "16", "--lr", "1e-3",
                  "--lr-step", "2", "--normalize", "--val-fraction", "0.2",
                  "--dropout", str(study.trials[0].params["dropout"]), "--pool", study.trials[0].params["pool"])
    assert resumed.exit_code == 0, resumed.output
    assert not (trial_dir / "pruned.json").exists() and (trial_dir / "summary.json").is_file()


def test_a_trial_with_the_choices_of_a_finished_one_takes_its_result_untrained(sample_cache, tmp_path):
    from pipeline.config import TrainConfig
    from pipeline.tune.space import SearchSpace
    from pipeline.tune.study import open_storage
    from pipeline.tune.tables import write_outputs
    from pipeline.tune.trial import Search, make_objective

    base = TrainConfig(cache=str(sample_cache), out=str(tmp_path), level="high", val_fraction=0.2, normalize=True)
    space = SearchSpace(hiddens=(16,), layers=(1,), epochs=(2,), batch_sizes=(16,), lr_range=(1e-3, 1e-3),
                        dropout_range=(0.5, 0.5), pools=("mean",))  # one configuration: the second trial repeats it
    for pruner in (optuna.pruners.NopPruner(), optuna.pruners.ThresholdPruner(upper=-1.0)):  # the latter: epoch 1
        out = tmp_path / type(pruner).__name__
        search = Search(base=base, space=space, out=out, study_name="twins", storage=None, storage_home=out,
                        pruner="median", label="sample")
        study = optuna.create_study(storage=open_storage(None, out), study_name="twins", direction="maximize",
                                    pruner=pruner)
        study.optimize(make_objective(search, 4, log=lambda m: None), n_trials=2)
        first, second = write_outputs(search, study, log=lambda m: None)
        assert first["state"] == second["state"] and first["val_video_top1"] == second["val_video_top1"]
        assert (first["epochs_run"], second["epochs_run"]) == ((2, 0) if first["state"] == "complete" else (1, 0))
        assert "the same choices as trial 0" in second["note"] and second["run"] == first["run"]
        assert [d.name for d in (out / "trials").iterdir()] == ["trial_0000"]  # trained once
        assert first["chosen"] == ("yes" if first["state"] == "complete" else "") and not second["chosen"]


def test_a_search_alone_proposes_the_same_trials_every_time_and_a_continued_one_draws_on(tmp_path):
    from pipeline.tune.study import load_study, open_storage

    def search(folder, trials, seed=3):
        study = load_study(open_storage(None, folder), "alone", seed=seed, pruner="none")
        study.optimize(lambda t: t.suggest_float("x", 0, 1) + 0.1 * (t.suggest_categorical("c", ("a", "b")) == "a"),
                       n_trials=trials)
        return [t.params["x"] for t in study.trials]

    first = search(tmp_path / "a", 8)  # past TPE's 5 random first trials
    assert search(tmp_path / "b", 8) == first and len(set(first)) == 8  # and every trial number draws its own
    assert search(tmp_path / "c", 8, seed=4) != first
    continued = search(tmp_path / "a", 3)  # the study goes on from trial 8: no draw of trials 0-7 again
    assert continued[:8] == first and not set(continued[8:]) & set(first)


def test_a_sqlite_storage_holds_the_study(sample_cache, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = tune(sample_cache, tmp_path / "tune", "--trials", "2", "--storage", url)
    assert result.exit_code == 0, result.output
    assert len(study_of(url).trials) == 2 and not (tmp_path / "tune" / "study.journal").exists()


def _command(cache, out, *more) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), "tune", "--cache", str(cache), "--level", "high", "--out", str(out),
            *TINY, *more]


def test_two_commands_at_once_share_one_journal_study(sample_cache, tmp_path):
    journal = tmp_path / "shared" / "study.journal"
    started = [subprocess.Popen(_command(sample_cache, tmp_path / "tune", "--trials", "3", "--storage", str(journal)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in started:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    study = optuna.load_study(study_name=optuna.get_all_study_names(_journal(journal))[0], storage=_journal(journal))
    assert len(study.trials) == 6  # the sum of the two commands' trials
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len({t.user_attrs["run"] for t in study.trials}) == 6  # no trial ran twice
    assert {t.system_attrs["mrrn:owner"]["pid"] for t in study.trials} == {p.pid for p in started}
    assert len(rows(tmp_path / "tune")) == 6  # the command that ended last lists every trial


def _journal(path: Path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def test_workers_run_the_command_s_trials_between_them(sample_cache, tmp_path):
    out = tmp_path / "tune"
    result = subprocess.run(_command(sample_cache, out, "--trials", "4", "--workers", "2", "--device", "cpu"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert len(rows(out)) == 4 and "worker 0:" in result.stderr and "worker 1:" in result.stderr
    assert len({t.system_attrs["mrrn:owner"]["pid"] for t in study_of(None, out).trials}) == 2


def test_kill_9_then_the_same_command_fails_the_killed_trial_and_continues_it(sample_cache, tmp_path):
    out = tmp_path / "tune"
    command = _command(sample_cache, out, "--trials", "2", "--pruner", "none", "--epochs", "40")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "trials" / "trial_0000" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert metrics.is_file(), "the first trial never finished an epoch"
    study = study_of(None, out)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "trial 0 of a process that ended mid-way marked failed and queued again" in again.stderr
    trials = study_of(None, out).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retry = trials[1]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.system_attrs["failed_trial"] == 0
    assert retry.params == trials[0].params and retry.user_attrs["run"] == "trials/trial_0000"
    epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs == list(range(1, 41))  # continued from its checkpoint, each epoch once
    table = rows(out)
    assert [r["state"] for r in table] == ["failed", "complete", "complete"]
    assert "retry of trial 0" in table[1]["note"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks trials itself, outside optimize
def test_a_trial_of_another_host_is_failed_by_its_silent_heartbeat_and_a_live_one_is_left_alone(tmp_path):
    """Across machines sharing a journal file, a trial is failed (and queued again) only once its heartbeat has
    been silent for the grace period; a trial of a live process on this host is never failed."""
    from pipeline.tune.study import (GRACE_SECONDS, HEARTBEAT_ATTR, OWNER_ATTR, fail_dead_trials, open_storage,
                                     this_process)

    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="hosts", direction="maximize")
    elsewhere, here = study.ask(), study.ask()
    for trial, owner, beat in ((elsewhere, {"host": "another-machine", "pid": 1, "started": "1"}, GRACE_SECONDS + 5),
                               (here, this_process(), GRACE_SECONDS + 5)):
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        trial.storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, owner)
        trial.storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, time.time() - beat)
    assert fail_dead_trials(study) == []  # neither owner is known to be dead: one is elsewhere, one is this process
    here.storage.set_trial_system_attr(here._trial_id, HEARTBEAT_ATTR, time.time())  # this process beats on
    optuna.storages.fail_stale_trials(study)  # what every trial's start does
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING]
    retry = study.get_trials()[2]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == study.get_trials()[0].params


@pytest.mark.parametrize("args, fragments", [
    (("--val-fraction", "0"), ("--val-fraction 0:", "never on the test split")),
    (("--storage", "redis://localhost/0"), ("--storage redis://localhost/0: unknown storage",)),
    (("--storage", "postgresql://mrrn:secret@127.0.0.1:1/none"), ("cannot open the database", "***")),
    (("--lr-range", "0,1e-3"), ("--lr-range 0,0.001: must lie in (0, inf]",)),
    (("--models", "attentive", "--hidden", "100"), ("--hidden 100: attentive splits hidden units",)),
    (("--models", "twostream"), ("--models twostream: needs --flow-cache",)),
])
def test_bad_input_is_one_line_and_writes_nothing(sample_cache, tmp_path, args, fragments):
    out = tmp_path / "tune"
    result = run("tune", "--cache", sample_cache, "--level", "high", "--out", out, "--trials", "1", *args)
    one_line_error(result, *fragments)
    assert "secret" not in result.stderr
    assert not out.exists()


def test_a_sweep_folder_is_never_written_by_tune(sample_cache, tmp_path):
    (tmp_path / "made_by.json").write_text(json.dumps({"kind": "sweep", "command": "sweep"}))
    one_line_error(tune(sample_cache, tmp_path, "--trials", "1"), "a sweep directory", "use another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made_by.json"]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own on a free local port (as the postgres user when running as root); skipped
    with the reason when one cannot be started here."""
    tools = [shutil.which(name) or f"/usr/local/bin/{name}" for name in ("initdb", "pg_ctl")]
    if not all(os.access(tool, os.X_OK) for tool in tools):
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    as_user = []
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="mrrn-pg-"))
    if as_user:
        os.chown(folder, user.pw_uid, user.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    steps = [[*as_user, tools[0], "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
             [*as_user, tools[1], "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
              f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=120)
            why = "" if done.returncode == 0 else (done.stderr or done.stdout).strip()[-300:]
        except (OSError, subprocess.TimeoutExpired) as err:  # runuser missing, a server that never answers
            why = str(err)
        if why:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip(f"a local PostgreSQL server could not be started: {why}")
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_user, tools[1], "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_postgresql_storage_holds_the_study(sample_cache, tmp_path, postgres_url):
    result = tune(sample_cache, tmp_path / "tune", "--trials", "2", "--storage", postgres_url)
    assert result.exit_code == 0, result.output
    from pipeline.tune.study import with_driver

    assert len(study_of(with_driver(postgres_url)).trials) == 2
