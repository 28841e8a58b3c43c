"""Ctrl-C (SIGINT) during a long command: the command says how much it kept and which command continues,
exits with status 130, and the command it names ends where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from cli import main
from pipeline.cache.reader import FeatureCache
from tests.conftest import key_ordered, REPO, folder_dataset
from tests.test_extract import extract_args


def interrupt_when(cmd: list[str], ready, stderr_file: Path) -> tuple[int, str]:
    """Start ``python cli.py *cmd``, send SIGINT once ``ready()`` holds to its whole process group (as Ctrl-C in
    a terminal does: decoding workers too), and return (exit status, stderr)."""
    with open(stderr_file, "w") as err:
        proc = subprocess.Popen([sys.executable, "cli.py", *cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    return proc.returncode, stderr_file.read_text()


def continuing_command(stderr: str) -> list[str]:
    """The arguments of the command the interrupted one named, after the program's name."""
    [line] = [x for x in stderr.splitlines() if x.startswith("continue with: ")]
    words = shlex.split(line.removeprefix("continue with: "))
    assert words[0] == "mrrn"
    return words[1:]


def test_ctrl_c_during_extraction_names_the_command_that_continues_it(tmp_path):
    root = folder_dataset(tmp_path / "data", per_class=8, frames=30)
    whole = tmp_path / "whole.h5"
    assert CliRunner().invoke(main, extract_args(root, whole)).exit_code == 0

    out = tmp_path / "stopped.h5"
    journal = Path(f"{out}.journal")
    status, stderr = interrupt_when(extract_args(root, out, "--batch-size", "4"),
                                    lambda: len(list(journal.glob("*.npz"))) >= 3, tmp_path / "stderr")
    assert status == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    with FeatureCache(out) as kept:
        done = len(kept.videos)
    assert 3 <= done < 16, "the run finished before it could be interrupted"
    assert f"interrupted: {done} finished videos kept in {out}" in stderr
    args = continuing_command(stderr)
    assert args == extract_args(root, out, "--batch-size", "4")

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"{done} were already done" in result.output
    with FeatureCache(whole) as a, FeatureCache(out) as b:
        assert [v.key for v in a.videos] == [v.key for v in b.videos]
        for level in ("low", "mid", "high"):
            np.testing.assert_allclose(key_ordered(a, level).astype(np.float32), key_ordered(b, level).astype(np.float32),
                                       rtol=1e-2, atol=1e-2)


def test_ctrl_c_during_training_names_the_command_that_resumes_it(sample_cache, tmp_path):
    args = ["train", "--cache", str(sample_cache), "--level", "high", "--hidden", "64", "--layers", "1",
            "--epochs", "8", "--lr", "1e-3", "--normalize", "--quiet"]
    whole = tmp_path / "whole"
    assert CliRunner().invoke(main, [*args, "--out", str(whole)]).exit_code == 0

    stopped = tmp_path / "stopped"
    metrics = stopped / "metrics.jsonl"
    status, stderr = interrupt_when([*args, "--out", str(stopped)],
                                    lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
                                    tmp_path / "stderr")
    assert status == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    kept = re.search(rf"^interrupted: (\d+) finished epochs? kept in {re.escape(str(stopped))}$", stderr, re.M)
    assert kept and 2 <= int(kept[1]) < 8, stderr  # the checkpoints' epochs (a metrics line may be one ahead)
    resumed = continuing_command(stderr)
    assert resumed == [*args, "--out", str(stopped), "--resume"]

    result = CliRunner().invoke(main, resumed)
    assert result.exit_code == 0, result.output
    a = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in b] == list(range(1, 9))
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}
    np.testing.assert_array_equal(np.load(whole / "scores_test.npz")["scores"],
                                  np.load(stopped / "scores_test.npz")["scores"])
