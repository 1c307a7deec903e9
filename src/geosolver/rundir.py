"""The run-directory contract: every command that writes results writes them through here.

A run directory holds a command's outputs plus ``config.json``: the effective configuration's
keys at the top level (so ``cfg["k"]`` reads a setting), plus four keys every run has::

    {"command": "evaluate", "geosolver_version": "0.1.0", "argv": ["geosolver", "evaluate", ...],
     "created": "2026-11-30T10:00:00Z", "k": [1, 10], "strategy": "densest", ...}

Every file goes through :mod:`geosolver.files` (temporary name + rename), so a killed command
never leaves a half-written result. Example::

    run = RunDir(out, "evaluate")
    run.write_config({"k": [1, 10], "strategy": "densest"})
    run.write_json("metrics.json", metrics)
    run.write_text("metrics.md", table)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from geosolver.files import atomic_write_json, atomic_write_parquet, atomic_write_text, version

CONFIG = "config.json"
#: keys every ``config.json`` has, set by :func:`run_config` (a config's own value is dropped).
RESERVED = ("command", "geosolver_version", "argv", "created")


def run_config(command: str, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The ``config.json`` record of a run: command, version, command line, effective config.

    Args:
        command: the sub-command (``"evaluate"``, ``"train"``, ``"curate select"``, ...).
        config: the effective configuration (every setting that shaped the result).
        extra: further top-level fields (e.g. ``result`` once a run has finished).
    """
    return {
        "command": command,
        "geosolver_version": version(),
        "argv": list(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: v for k, v in config.items() if k not in RESERVED},
        **extra,
    }


class RunDir:
    """A command's output directory (created on construction).

    Args:
        path: the directory.
        command: the sub-command name recorded in ``config.json``.
    """

    def __init__(self, path: str | os.PathLike, command: str):
        self.path = Path(path)
        self.command = command
        if self.path.exists() and not self.path.is_dir():
            from geosolver.errors import GeosolverError

            raise GeosolverError(f"--out {self.path} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: dict[str, Any], **extra: Any) -> Path:
        """Write ``config.json`` (see :func:`run_config`); returns its path."""
        p = self.path / CONFIG
        atomic_write_json(p, run_config(self.command, config, **extra))
        return p

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.path / name
        atomic_write_json(p, obj)
        return p

    def write_text(self, name: str, text: str) -> Path:
        p = self.path / name
        atomic_write_text(p, text)
        return p

    def write_parquet(self, name: str, df) -> Path:
        p = self.path / name
        atomic_write_parquet(p, df)
        return p
