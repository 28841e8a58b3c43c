"""The project's error base class: what the command line shows as one line.

Every error that means "the user's input or world is not as asked" (a bad option, a damaged file, a
missing video, a disk that is full) derives from :class:`MrrnError`; its message names the file or
option and the reason. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class MrrnError(Exception):
    """A condition of the user's input or environment; ``str(err)`` is one line naming what and why."""


class ConfigError(MrrnError, ValueError):
    """Settings that do not make sense together or are out of range."""


class TrainError(MrrnError):
    """A training run that cannot start or go on as asked (its data, its run directory)."""
