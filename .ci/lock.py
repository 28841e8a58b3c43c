"""Write constraints.txt for several Pythons at once (what `make lock` runs).

    python .ci/lock.py OUT PYTHON [PYTHON ...]

Each Python resolves the newest releases setup.cfg allows for `.[test,report]` (pip's dry run: nothing is
installed). A package every Python resolves to the same release gets one plain pin; where the Pythons
need different releases (a release that dropped an older Python), each gets its own pin with a
`python_version` marker, and the newest Python's pin also covers every later Python. OUT keeps the
comment lines at its top. Standard library only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

NOT_PINNED = {"mrrn", "pip", "setuptools", "wheel"}  # what `pip freeze --exclude-editable` leaves out


def resolve(python: str) -> tuple[tuple[int, int], dict[str, str]]:
    """The Python's version and {package: version} of a fresh resolution."""
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], check=True,
                             capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", str(report), ".[test,report]"], check=True)
        installs = json.loads(report.read_text())["install"]
    pins = {i["metadata"]["name"]: i["metadata"]["version"] for i in installs}
    return (int(version[0]), int(version[1])), {n: v for n, v in pins.items() if n.lower() not in NOT_PINNED}


def _marker(first: tuple[int, int], last: tuple[int, int], newest: tuple[int, int]) -> str:
    low = f'python_version >= "{first[0]}.{first[1]}"'
    if first == last != newest:
        return f'python_version == "{first[0]}.{first[1]}"'
    if last == newest:
        return low
    return f'{low} and python_version <= "{last[0]}.{last[1]}"'


def merge(locks: dict[tuple[int, int], dict[str, str]]) -> list[str]:
    """One line per pin; consecutive Pythons that agree share a line."""
    pythons = sorted(locks)
    names = sorted({n for pins in locks.values() for n in pins}, key=str.lower)
    lines = []
    for name in names:
        versions = [locks[p].get(name) for p in pythons]
        if all(v == versions[0] for v in versions):
            lines.append(f"{name}=={versions[0]}")
            continue
        start = 0
        for i in range(1, len(pythons) + 1):
            if i == len(pythons) or versions[i] != versions[start]:
                if versions[start] is not None:
                    marker = _marker(pythons[start], pythons[i - 1], pythons[-1])
                    lines.append(f"{name}=={versions[start]}; {marker}")
                start = i
    return lines


def main(out: str, pythons: list[str]) -> None:
    path = Path(out)
    header = []
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
    locks = dict(resolve(p) for p in pythons)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text("\n".join(header + merge(locks)) + "\n")
    tmp.replace(path)
    print(f"{out}: locked for Python " + ", ".join(f"{a}.{b}" for a, b in sorted(locks)))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
