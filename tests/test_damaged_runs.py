"""Damaged run files are one line naming the file, and recoverable where the work is on disk: metrics.jsonl
cut mid-line or holding a bad line, summary.json empty or of another shape, a last.pt that is not this run's,
a run record edited to ask for a model of another size. After each, a rerun with the cause removed ends
where an uninterrupted run ends."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from tests.conftest import one_line_error, run

# the settings of the session's level runs (tests/conftest.py: small_train_config)
LEVEL_RUN = ["--hidden", "128", "--layers", "2", "--epochs", "30", "--lr", "1e-3", "--lr-step", "100", "--normalize",
             "--quiet"]


def train_high(cache, out, *extra):
    return run("train", "--cache", cache, "--level", "high", "--out", out, *LEVEL_RUN, *extra)


def final(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["final"]


def test_a_bad_metrics_line_is_named_and_resume_rebuilds_the_run(level_runs, sample_cache, tmp_path):
    out = Path(shutil.copytree(level_runs["high"], tmp_path / "high"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[9] = '{"epoch": 10, "loss": '  # a line cut short in the middle of the file
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    one_line_error(run("report", out), f"{out / 'metrics.jsonl'}: line 10 is damaged (not JSON")
    one_line_error(train_high(sample_cache, out), f"{out / 'metrics.jsonl'}: line 10 is damaged", "pass --resume")
    rebuilt = train_high(sample_cache, out, "--resume")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert final(out) == final(level_runs["high"])
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        e for e in range(1, 31) if e != 10]
    assert run("report", out).exit_code == 0


def test_a_metrics_line_cut_by_a_kill_is_dropped_on_resume(level_runs, sample_cache, tmp_path):
    out = Path(shutil.copytree(level_runs["high"], tmp_path / "high"))
    (out / "summary.json").unlink()  # killed after the checkpoint of epoch 30, while appending a line
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 31, "lo')
    resumed = train_high(sample_cache, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert final(out) == final(level_runs["high"])
    assert (out / "metrics.jsonl").read_text() == (level_runs["high"] / "metrics.jsonl").read_text()


def test_a_damaged_summary_is_named_by_train_and_fuse_and_rebuilt_by_resume(level_runs, sample_cache, tmp_path):
    for damage in ("", '{"out": "high", "epochs": 30', "[1, 2, 3]"):
        out = tmp_path / "high"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(level_runs["high"], out)
        (out / "summary.json").write_text(damage)
        one_line_error(train_high(sample_cache, out), f"{out / 'summary.json'}: damaged run summary", "pass --resume")
        fused = tmp_path / "fused"
        one_line_error(run("fuse", level_runs["low"], level_runs["mid"], out, "--out", fused),
                       f"{out / 'summary.json'}: damaged run summary")
        assert not fused.exists()  # nothing written before every input was read
    rebuilt = train_high(sample_cache, out, "--resume")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert final(out) == final(level_runs["high"])
    assert run("fuse", level_runs["low"], level_runs["mid"], out, "--out", fused).exit_code == 0


def test_resume_refuses_a_checkpoint_that_is_not_this_run_s(level_runs, sample_cache, tmp_path):
    out = Path(shutil.copytree(level_runs["high"], tmp_path / "high"))
    (out / "summary.json").unlink()
    good = (out / "last.pt").read_bytes()
    shutil.copy(level_runs["low"] / "last.pt", out / "last.pt")  # the low level's model: 128 inputs, not 512
    one_line_error(train_high(sample_cache, out, "--resume"), f"{out / 'last.pt'}: not a checkpoint of this run",
                   "has shape")
    state = torch.load(level_runs["high"] / "last.pt", weights_only=True)
    for broken in ([1, 2, 3], {**state, "epoch": "ten"}, {**state, "optimizer": {"state": {}, "param_groups": []}},
                   {**state, "rng": {"cpu": torch.zeros(3, dtype=torch.uint8)}}):
        torch.save(broken, out / "last.pt")
        result = train_high(sample_cache, out, "--resume")
        one_line_error(result, f"{out / 'last.pt'}: not a checkpoint")
    (out / "last.pt").write_bytes(good)
    resumed = train_high(sample_cache, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert final(out) == final(level_runs["high"])


def test_a_run_record_asking_for_a_huge_model_is_refused_before_anything_is_built(level_runs, sample_dir, tmp_path):
    out = Path(shutil.copytree(level_runs["high"], tmp_path / "high"))
    record = json.loads((out / "config.json").read_text())
    record["train"]["hidden"] = 100_000_000  # hundreds of GiB of weights, were the model built
    (out / "config.json").write_text(json.dumps(record))
    video = sample_dir / "videos" / "Stripes" / "v_Stripes_g01_c01.avi"
    started = time.perf_counter()
    one_line_error(run("predict", video, "--runs", out), f"{out / 'last.pt'}: does not fit the run's model",
                   "the run record's settings give")
    assert time.perf_counter() - started < 60
    shutil.copy(level_runs["high"] / "config.json", out / "config.json")
    assert run("predict", video, "--runs", out).exit_code == 0


def test_a_sweep_reports_a_damaged_run_and_goes_on(sample_cache, tmp_path):
    args = ["sweep", "--cache", sample_cache, "--level", "high", "--hidden", "16,32", "--layers", "1", "--epochs", "2",
            "--lr", "1e-3", "--normalize", "--quiet", "--out", tmp_path / "sweep"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    table = (tmp_path / "sweep" / "results.md").read_text()
    damaged = tmp_path / "sweep" / "high_rrn_h16_l1_mean"
    (damaged / "summary.json").unlink()  # unfinished, with a last.pt cut short
    (damaged / "last.pt").write_bytes((damaged / "last.pt").read_bytes()[:100])
    second = run(*args)
    assert second.exit_code == 0, second.output
    assert "high_rrn_h16_l1_mean: damaged, left out of the numbers" in second.stderr
    assert "(already complete)" in second.stderr  # the other run is read as before
    report = (tmp_path / "sweep" / "results.md").read_text()
    assert "| damaged |" in report and f"Run high_rrn_h16_l1_mean is damaged and has no numbers: {damaged / 'last.pt'}" in report
    shutil.rmtree(damaged)  # the cause removed: the sweep trains that run again
    third = run(*args)
    assert third.exit_code == 0, third.output
    assert (tmp_path / "sweep" / "results.md").read_text().split("| s/epoch |")[1].count("|") == \
        table.split("| s/epoch |")[1].count("|")
