"""How the `mrrn` process itself behaves, as a shell script or a pipeline sees it: what it imports before a
command needs it, and how it ends (docs/development.md, "Mechanisms to know")."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, folder_dataset


def _mrrn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_the_command_line_imports_neither_torch_nor_h5py_nor_opencv_before_a_command_runs():
    """The decoding workers' server is started before torch is imported (the two imports then overlap, and
    no worker is forked from a process whose torch thread pools have run): that needs `cli.py` and
    `pipeline.extract.workers` to import nothing heavy."""
    code = ("import sys, cli, pipeline.extract.workers; "
            "print(sorted(m for m in ('torch', 'h5py', 'cv2', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_successful_command_delivers_all_its_output_through_a_pipe(tmp_path):
    """A successful command ends with os._exit(0), skipping the interpreter's teardown: everything it printed
    must have been flushed first, even when stdout is a pipe (block-buffered)."""
    root = folder_dataset(tmp_path / "videos", per_class=3, frames=4)
    result = _mrrn("index", "--dataset", "folder", "--root", str(root), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train"]["found"] + summary["test"]["found"] == 6 and summary["classes"] == 2


def test_a_failing_command_ends_the_usual_way_with_one_line(tmp_path):
    """A failure leaves through the normal exit (clean-up handlers run): exit status 1 and one Error line."""
    result = _mrrn("index", "--dataset", "folder", "--root", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
