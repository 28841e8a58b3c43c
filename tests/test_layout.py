"""The package keeps the shape that lets one engineer hold it in their head: small modules and functions,
h5py behind the cache modules, fusion and reports free of torch, and a library that never imports
its command line."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

MODULES = sorted((REPO / "pipeline").rglob("*.py"))
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60  # a `# long: <why>` comment on the line above a def exempts it


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _imports(path) -> set[str]:
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_and_functions_stay_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.name}: {len(lines)} lines"
    for node in ast.walk(_tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            exempt = first >= 2 and lines[first - 2].strip().startswith("# long:")
            length = node.end_lineno - node.lineno + 1
            assert exempt or length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}: {length} lines"


def test_the_library_never_imports_the_command_line():
    for path in MODULES:
        assert not {"cli"} & {name.split(".")[0] for name in _imports(path)}, path.name


def test_only_the_cache_modules_import_h5py():
    users = {path.name for path in MODULES if any(name.split(".")[0] == "h5py" for name in _imports(path))}
    assert users == {"reader.py", "writer.py"}


def test_fusion_and_reports_need_neither_torch_nor_h5py():
    code = ("import sys, pipeline.evaluate.fuse, pipeline.evaluate.report, pipeline.evaluate.metrics, pipeline.evaluate.scores; "
            "print(sorted(m for m in ('torch', 'h5py', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
