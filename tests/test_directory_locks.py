"""Run, sweep and fusion directories are owned and locked: one writer at a time, each directory says what
made it, and no command ever writes over another command's results. Real processes, stopped with SIGSTOP
while they hold their lock, so that the second writer meets them at work."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


from tests.conftest import one_line_error, REPO, run

TINY = ["--hidden", "16", "--layers", "1", "--lr", "1e-3", "--lr-step", "100", "--normalize", "--quiet"]


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def start(args: list, ready: Path) -> subprocess.Popen:
    """An mrrn command in its own process, stopped (SIGSTOP) as soon as ``ready`` exists: it then holds its lock."""
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGSTOP)
    return proc


def second(args: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def refused_in_one_line(done: subprocess.CompletedProcess, *fragments):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_two_trainings_into_one_out_at_once_one_runs_the_other_is_refused_before_writing(sample_cache, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--cache", sample_cache, "--level", "high", "--out", out, "--epochs", "20", *TINY]
    first = start(args, out / "config.json")
    try:
        before = files_of(out)
        refused_in_one_line(second(args), f"{out}: another mrrn process is writing this directory")
        assert files_of(out) == before  # the first one is stopped: anything changed, the second one wrote it
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.communicate()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 21))
    assert json.loads((out / "made_by.json").read_text())["kind"] == "run"
    assert not (out / ".lock").exists()  # the lock goes with its holder


def test_two_identical_sweeps_at_once_are_refused(sample_cache, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--cache", sample_cache, "--levels", "high", "--epochs", "20", *TINY, "--out", out]
    first = start(args, out / "high_rrn_h16_l1_mean" / "config.json")
    try:
        before = files_of(out)
        refused_in_one_line(second(args), f"{out}: another mrrn process is writing this directory")
        assert files_of(out) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.communicate()
    assert json.loads((out / "made_by.json").read_text())["kind"] == "sweep"
    assert (out / "results.csv").is_file()


def test_fuse_into_one_of_its_runs_is_refused_and_the_run_stays_byte_identical(level_runs, sample_cache, tmp_path):
    runs = {level: Path(shutil.copytree(path, tmp_path / level)) for level, path in level_runs.items()}
    before = files_of(runs["high"])
    one_line_error(run("fuse", runs["low"], runs["mid"], runs["high"], "--out", runs["high"]),
                   f"{runs['high']}: a run directory (made by `mrrn train`), not a fusion directory")
    assert files_of(runs["high"]) == before
    fused = tmp_path / "fused"
    assert run("fuse", runs["low"], runs["mid"], runs["high"], "--out", fused).exit_code == 0
    assert json.loads((fused / "made_by.json").read_text())["kind"] == "fusion"
    before = files_of(fused)
    one_line_error(run("train", "--cache", sample_cache, "--level", "high", "--out", fused, *TINY),
                   f"{fused}: a fusion directory (made by `mrrn fuse`), not a run directory")
    one_line_error(run("sweep", "--cache", sample_cache, "--out", fused, *TINY), "a fusion directory")
    one_line_error(run("sweep", "--cache", sample_cache, "--out", runs["low"], *TINY), "a run directory")
    assert files_of(fused) == before
    assert run("fuse", runs["low"], runs["mid"], runs["high"], "--out", fused).exit_code == 0  # its own: again


def test_directories_of_older_versions_are_known_by_their_files(level_runs, sample_cache, tmp_path):
    run_dir = Path(shutil.copytree(level_runs["high"], tmp_path / "old_run"))
    (run_dir / "made_by.json").unlink()
    fused = tmp_path / "old_fusion"
    assert run("fuse", level_runs["low"], level_runs["high"], "--out", fused, "--method", "sum").exit_code == 0
    (fused / "made_by.json").unlink()
    sweep = tmp_path / "old_sweep"
    sweep.mkdir()
    (sweep / "results.csv").write_text("cache,level\n")
    for out, kind in ((run_dir, "run"), (sweep, "sweep")):
        one_line_error(run("fuse", level_runs["low"], level_runs["high"], "--out", out, "--method", "sum"),
                       f"{out}: a {kind} directory")
    one_line_error(run("train", "--cache", sample_cache, "--level", "high", "--out", fused, *TINY), "a fusion directory")
    one_line_error(run("train", "--cache", sample_cache, "--level", "high", "--out", sweep, *TINY), "a sweep directory")
    again = run("report", run_dir)  # an older run still takes its report
    assert again.exit_code == 0, again.output


def test_a_run_is_not_fused_with_itself(level_runs, tmp_path):
    high = level_runs["high"]
    for twice in ([high, high], [high, Path(f"{high}/../{high.name}")]):
        one_line_error(run("fuse", level_runs["low"], *twice, "--out", tmp_path / "f", "--method", "sum"),
                       "given twice; a run is fused with other runs, not with itself")
    assert not (tmp_path / "f").exists()


def test_a_report_is_refused_while_another_process_writes_the_directory(level_runs, tmp_path):
    run_dir = Path(shutil.copytree(level_runs["high"], tmp_path / "high"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipeline.evaluate.layout import claimed\n"
        f"with claimed({str(run_dir)!r}, 'run'):\n    print('held', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(run("report", run_dir), f"{run_dir}: another mrrn process is writing this directory")
        assert not (run_dir / "report.md").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run("report", run_dir).exit_code == 0  # the OS released the lock of the killed holder
