"""constraints.txt pins one release of each package for every Python the README names (python_version markers
where a release dropped an older Python), and `make lock` writes it in that shape (.ci/lock.py)."""
from __future__ import annotations

import importlib.util

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from tests.conftest import REPO


def pins_for(python: str) -> dict[str, str]:
    """{package: version} that pip -c constraints.txt applies on ``python`` ("3.10"); a package pinned twice fails."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"python_version": python}):
            continue
        assert req.name.lower() not in pins, f"{req.name} pinned twice for Python {python}"
        [spec] = req.specifier
        assert spec.operator == "==", line
        pins[req.name.lower()] = spec.version
    return pins


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_every_python_the_readme_names_gets_one_pin_of_each_package(python):
    pins = pins_for(python)
    for needed in ("torch", "torchvision", "numpy", "h5py", "opencv-python-headless", "matplotlib", "pytest"):
        assert needed in pins, f"{needed} is not pinned for Python {python}"
    assert "Python >= 3.10" in (REPO / "README.md").read_text()  # the oldest checked here


def test_numpy_and_contourpy_releases_that_dropped_python_3_10_are_pinned_for_newer_pythons_only():
    old, new = pins_for("3.10"), pins_for("3.11")
    assert old["numpy"].startswith("2.2.") and new["numpy"] != old["numpy"]
    assert old["contourpy"] != new["contourpy"]
    assert old["torch"] == new["torch"]  # the lock is kept wherever the release installs


def test_make_lock_gives_one_line_to_releases_every_python_shares_and_markers_to_the_others():
    spec = importlib.util.spec_from_file_location("lock", REPO / ".ci" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    lines = lock.merge({(3, 10): {"torch": "2.14.1", "numpy": "2.2.6", "tomli": "2.5.0"},
                        (3, 11): {"torch": "2.14.1", "numpy": "2.4.6"},
                        (3, 12): {"torch": "2.14.1", "numpy": "2.4.6"}})
    assert lines == ['numpy==2.2.6; python_version == "3.10"', 'numpy==2.4.6; python_version >= "3.11"',
                     'tomli==2.5.0; python_version == "3.10"', "torch==2.14.1"]
    for line in lines:
        Requirement(line)  # pip's own grammar
    assert Marker('python_version >= "3.11"').evaluate({"python_version": "3.13"})
