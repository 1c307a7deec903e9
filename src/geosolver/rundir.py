"""The run-directory contract: every command that writes results writes them through here.

A run directory holds a command's outputs plus ``config.json``: the effective configuration's
keys at the top level (so ``cfg["k"]`` reads a setting), plus four keys every run has::

    {"command": "evaluate", "geosolver_version": "0.1.0", "argv": ["geosolver", "evaluate", ...],
     "created": "2026-11-30T10:00:00Z", "k": [1, 10], "strategy": "densest", ...}

Every file goes through :mod:`geosolver.files` (temporary name + rename), so a killed command
never leaves a half-written result.

**Nothing of the user's is overwritten.** An existing, non-empty ``--out`` is used only when its
``config.json`` names the same command (a re-run or a resumed run); any other folder — the
user's files, an embedding store, another command's run — is refused with one line
(:class:`~geosolver.errors.OutputDirError`), unless ``overwrite`` is passed (the CLI's
``--overwrite``; :func:`overwriting` sets it for every run directory opened inside it, so library
functions need no parameter of their own). A new or empty folder is claimed at once: a minimal
``config.json`` naming the command is written on construction, so a run killed before its own
``write_config`` can still be re-run into the same folder. A run directory never deletes a file.
Example::

    run = RunDir(out, "evaluate")
    run.write_config({"k": [1, 10], "strategy": "densest"})
    run.write_json("metrics.json", metrics)
    run.write_text("metrics.md", table)
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from geosolver.errors import OutputDirError
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


_OVERWRITE: contextvars.ContextVar[bool] = contextvars.ContextVar("geosolver_overwrite", default=False)


@contextlib.contextmanager
def overwriting(allowed: bool = True) -> Iterator[None]:
    """Within this block, every :class:`RunDir` may write into a folder it did not create
    (the CLI's ``--overwrite``)."""
    token = _OVERWRITE.set(bool(allowed))
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


def recorded_command(path: str | os.PathLike) -> str | None:
    """The ``command`` that ``PATH/config.json`` records, or ``None`` (no file, not JSON, no command)."""
    try:
        cfg = json.loads((Path(path) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    cmd = cfg.get("command") if isinstance(cfg, dict) else None
    return cmd if isinstance(cmd, str) else None


def check_out(path: str | os.PathLike, command: str, overwrite: bool | None = None) -> bool:
    """Whether ``command`` may write into ``path``; call it before any work starts.

    Returns:
        ``True`` when ``path`` is missing or an empty directory (the caller claims it), ``False``
        when it is this command's own earlier output (or ``overwrite`` allows it).

    Raises:
        OutputDirError: ``path`` is a file, or a non-empty directory whose ``config.json`` is
            missing or names another command (and ``overwrite`` is not set). Nothing is written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"--out {p} is a file, not a directory")
    if not p.exists():
        return True
    names = sorted(q.name for q in p.iterdir())
    if not names:
        return True
    if overwrite if overwrite is not None else _OVERWRITE.get():
        return False
    found = recorded_command(p)
    if found == command:
        return False
    if found is not None:
        what = f"the output of `geosolver {found}`"
    elif "manifest.json" in names:
        what = "an embedding store"
    else:
        shown = ", ".join(names[:4]) + (f", … ({len(names)} entries)" if len(names) > 4 else "")
        what = f"files that `geosolver {command}` did not write ({shown})"
    raise OutputDirError(f"output folder {p} already holds {what}; pick a new or empty folder, "
                         f"or pass --overwrite to write `geosolver {command}`'s files into it anyway")


class RunDir:
    """A command's output directory (created on construction; see the module docstring).

    Args:
        path: the directory.
        command: the sub-command name recorded in ``config.json``.
        overwrite: write into a folder this command did not create (default: :func:`overwriting`).

    Raises:
        OutputDirError: see :func:`check_out`.
    """

    def __init__(self, path: str | os.PathLike, command: str, overwrite: bool | None = None):
        self.path = Path(path)
        self.command = command
        fresh = check_out(self.path, command, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        if fresh:  # claim the folder: a re-run after a kill is this command's own output
            atomic_write_json(self.path / CONFIG, run_config(command, {}))

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
