"""Every run directory holds TensorBoard event files that TensorBoard's own reader reads back with the numbers
of its metrics.jsonl, epoch by epoch, and with the run's hyper-parameters; a resumed or extended run's files
follow the metrics.jsonl it kept; a finished run is left alone; and a failure to write them costs one warning
line, never the run."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from pipeline.evaluate.layout import LAST_CHECKPOINT, event_files
from pipeline.precision import training_precision
from pipeline.train import tensorboard_log
from pipeline.train.loop import fit
from pipeline.train.rundir import RunDir
from pipeline.train.tensorboard_log import epoch_scalars, run_hparams
from tests.conftest import QUIET, run, small_train_config

TINY = dict(hidden=16, layers=1)
TINY_ARGS = ["--level", "high", "--hidden", "16", "--layers", "1", "--lr", "1e-3", "--lr-step", "100", "--normalize",
             "--quiet"]


def metrics_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def events_of(out: Path) -> EventAccumulator:
    """The run directory as TensorBoard reads it: every event kept (size guidance 0), restarts honoured."""
    events = EventAccumulator(str(out), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def assert_events_are_the_metrics(out: Path) -> None:
    """Every number of every metrics.jsonl line, and nothing else, at its epoch, once, equal in float32."""
    expected: dict[str, list[tuple[int, float]]] = {}  # tag -> [(epoch, value)]
    for row in metrics_of(out):
        for tag, value in epoch_scalars(row).items():
            expected.setdefault(tag, []).append((row["epoch"], value))
    events = events_of(out)
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        seen = events.Scalars(tag)
        assert [e.step for e in seen] == [epoch for epoch, _ in points], tag  # each epoch once, in order
        np.testing.assert_array_equal(np.float32([e.value for e in seen]), np.float32([v for _, v in points]),
                                      err_msg=tag)


def session_of(out: Path) -> tuple[dict, bool]:
    """The HParams session of a run directory: its hyper-parameters, and whether it ended."""
    content = events_of(out).PluginTagToContent(metadata.PLUGIN_NAME)
    start = HParamsPluginData.FromString(content[metadata.SESSION_START_INFO_TAG]).session_start_info
    hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return hparams, metadata.SESSION_END_INFO_TAG in content


def as_stored(hparams: dict) -> dict:
    """Hyper-parameters as the HParams plugin stores them: numbers (bools too, as torch writes them) as floats."""
    return {k: float(v) if isinstance(v, (bool, int, float)) else v for k, v in hparams.items()}


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in event_files(out)}


def test_a_run_s_event_files_read_back_as_its_metrics_with_its_hyper_parameters(sample_cache, tmp_path):
    out = tmp_path / "run"
    fit(small_train_config(sample_cache, out, epochs=3, val_fraction=0.25, **TINY), **QUIET)
    assert len(event_files(out)) == 1 and not [p for p in out.iterdir() if p.is_dir()]  # in the run directory itself
    assert_events_are_the_metrics(out)
    assert {"train/loss", "train/clip_acc", "test/video_top1", "test/mean_class_acc", "val/video_top1", "lr",
            "time/epoch_seconds"} <= set(events_of(out).Tags()["scalars"])
    hparams, ended = session_of(out)
    record = json.loads((out / "config.json").read_text())
    assert ended and hparams == as_stored(run_hparams(record))
    assert hparams["model"] == "rrn" and hparams["level"] == "high" and hparams["hidden"] == 16
    assert hparams["lr"] == pytest.approx(1e-3) and hparams["epochs"] == 3 and hparams["clip_length"] == 30
    assert hparams["precision"] == training_precision("auto", torch.device("cpu"))  # what it computed in, not "auto"
    assert hparams["backbone"] == "resnet34" and "out" not in hparams


def test_a_resumed_and_extended_run_s_event_files_follow_metrics_jsonl(sample_cache, tmp_path, monkeypatch):
    """Killed between epoch 3's metrics line and its checkpoint: the event files, like metrics.jsonl, showed
    epoch 3; the resumed run trains it again, and each epoch is there once, with the numbers kept."""
    out = tmp_path / "run"
    save_checkpoint = RunDir.save_checkpoint

    def killed_at_epoch_3(rundir, state, name):
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        save_checkpoint(rundir, state, name)

    monkeypatch.setattr(RunDir, "save_checkpoint", killed_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        fit(small_train_config(sample_cache, out, epochs=4, **TINY), **QUIET)
    monkeypatch.undo()
    assert [m["epoch"] for m in metrics_of(out)] == [1, 2, 3] and RunDir(out).checkpoint_epoch() == 2
    assert [e.step for e in events_of(out).Scalars("train/loss")] == [1, 2, 3]  # the live view
    assert not session_of(out)[1]  # unfinished
    resumed = run("train", "--cache", sample_cache, "--out", out, "--epochs", 4, "--resume", *TINY_ARGS)
    assert resumed.exit_code == 0, resumed.output
    assert [m["epoch"] for m in metrics_of(out)] == [1, 2, 3, 4] and len(event_files(out)) == 1
    assert_events_are_the_metrics(out)
    assert session_of(out)[1]
    fit(small_train_config(sample_cache, out, epochs=5, **TINY), resume=True, **QUIET)  # extended
    assert_events_are_the_metrics(out)
    hparams, ended = session_of(out)
    assert hparams["epochs"] == 5 and ended and len(event_files(out)) == 1
    before = files_of(out)
    assert fit(small_train_config(sample_cache, out, epochs=5, **TINY), **QUIET).already_complete
    assert files_of(out) == before  # a complete run writes nothing


def test_an_epoch_whose_metrics_line_was_damaged_leaves_the_event_files_too(sample_cache, tmp_path):
    out = tmp_path / "run"
    fit(small_train_config(sample_cache, out, epochs=2, **TINY), **QUIET)
    (out / "summary.json").unlink()  # unfinished again, as if killed after its last checkpoint
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(["{not json", *lines[1:]]) + "\n")
    warnings = []
    fit(small_train_config(sample_cache, out, epochs=3, **TINY), resume=True, progress=False, log=warnings.append)
    assert any("line 1 is damaged" in w for w in warnings)
    assert [m["epoch"] for m in metrics_of(out)] == [2, 3]
    assert_events_are_the_metrics(out)  # no epoch 1: its numbers are lost in both


def test_event_files_that_cannot_be_written_cost_one_warning_line_not_the_run(sample_cache, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tensorboard_log, "open", disk_full, raising=False)  # the event files' writes alone
    out, lines = tmp_path / "run", []
    summary = fit(small_train_config(sample_cache, out, epochs=3, **TINY), progress=False, log=lines.append)
    assert summary.final["epoch"] == 3 and [m["epoch"] for m in metrics_of(out)] == [1, 2, 3]
    assert (out / "summary.json").is_file() and (out / LAST_CHECKPOINT).is_file()
    warnings = [line for line in lines if "TensorBoard" in line]
    assert len(warnings) == 1 and "\n" not in warnings[0], lines
    assert warnings[0].startswith(f"warning: {out}") and "not written (disk full)" in warnings[0]
    monkeypatch.undo()
    fit(small_train_config(sample_cache, out, epochs=4, **TINY), resume=True, **QUIET)  # extended: written again
    assert_events_are_the_metrics(out)
