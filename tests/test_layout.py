"""The package keeps the shape that lets one engineer hold it in their head: one folder per stage, one level
deep, with empty ``__init__.py`` files; small modules and functions with short positional signatures; h5py
behind the cache package; evaluation (fusion, reports, score files) free of torch, h5py and OpenCV; and a
library that never imports its command line."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
MODULES = sorted(PACKAGE.rglob("*.py"))
STAGES = ("datasets", "extract", "cache", "sru", "train", "evaluate", "tune")
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
MAX_POSITIONAL = 6  # parameters that can be passed by position; keyword-only ones (after `*`) do not count
SCHEMA_BOUND = ("jit", "custom_op", "register_kernel", "register_fake")  # decorators of kernels and custom ops


def _name(path) -> str:
    return path.relative_to(REPO).as_posix()


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


def _top_level(path) -> set[str]:
    return {name.split(".")[0] for name in _imports(path)}


def _functions(tree):
    """Every function with whether it is a method (its first parameter is then the instance or class)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield item, not any(_decorator(d) == "staticmethod" for d in item.decorator_list)
    methods = {id(item) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for item in node.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) not in methods:
            yield node, False


def _decorator(node) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    return ast.unparse(node)


def test_the_package_is_one_folder_per_stage_one_level_deep_with_empty_inits():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(STAGES)
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").read_text() == "", f"pipeline/{stage}/__init__.py re-exports"
        nested = [p for p in (PACKAGE / stage).iterdir() if p.is_dir() and p.name != "__pycache__"]
        assert not nested, f"pipeline/{stage} nests {nested}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_modules_and_functions_stay_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{_name(path)}: {len(lines)} lines"
    for node, _ in _functions(_tree(path)):
        length = node.end_lineno - node.lineno + 1
        assert length <= MAX_FUNCTION_LINES, f"{_name(path)}:{node.lineno} {node.name}: {length} lines"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_functions_take_few_positional_parameters(path):
    """Long argument lists become small frozen context objects or keyword-only parameters. Exempt: Triton
    kernels, which take their pointers and strides, and a torch custom op with its kernels, whose
    parameters are the op's tensors (custom ops take no keyword-only tensors)."""
    for node, is_method in _functions(_tree(path)):
        if any(_decorator(d).endswith(SCHEMA_BOUND) for d in node.decorator_list):
            continue
        positional = len(node.args.posonlyargs) + len(node.args.args) - (1 if is_method else 0)
        assert positional <= MAX_POSITIONAL, f"{_name(path)}:{node.lineno} {node.name}: {positional} positional"


def test_the_library_never_imports_the_command_line():
    for path in MODULES:
        assert "cli" not in _top_level(path), _name(path)


def test_only_the_cache_package_imports_h5py():
    users = {_name(path) for path in MODULES if "h5py" in _top_level(path)}
    assert users and all(name.startswith("pipeline/cache/") for name in users), users


def test_evaluation_imports_neither_torch_nor_h5py_nor_opencv():
    """Fusion, reports and score files run where only numpy is installed: nothing under pipeline/evaluate/
    imports them, directly or through what it imports."""
    modules = [f"pipeline.evaluate.{p.stem}" for p in sorted((PACKAGE / "evaluate").glob("*.py")) if p.stem != "__init__"]
    code = (f"import sys; import {', '.join(modules)}; "
            "print(sorted(m for m in ('torch', 'h5py', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
