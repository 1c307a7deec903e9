"""argparse value types shared by every sub-command: a bad number is refused at the parser with
one line naming the option's rule (exit code 2), before any work starts."""

from __future__ import annotations

import argparse
import math


def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, shard sizes, k, nlist, ...)."""
    v = _number(int, text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker counts, bootstrap resamples, ranks)."""
    v = _number(int, text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, temperatures, radii)."""
    v = _number(float, text)
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (weights that 0 switches off)."""
    v = _number(float, text)
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def fraction(text: str) -> float:
    """A number in (0, 1] (a recall target, a share)."""
    v = _number(float, text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return v


def comma_list(text: str) -> list[str]:
    """Comma-separated names (``"a, b"`` → ``["a", "b"]``)."""
    return [t.strip() for t in text.split(",")]


def port(text: str) -> int:
    """A TCP port, 1–65535."""
    v = _number(int, text)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {v}")
    return v


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One option per field of a job's config dataclass (``pq_m`` → ``--pq-m``), so a setting is
    declared once. Each field's ``metadata`` gives ``help``, and optionally ``type`` (the name of a
    value type of this module), ``choices``, ``nargs``, ``metavar``, ``required``, ``positional``
    (an argument, not an option) and ``cli=False`` (not on the command line). Booleans become
    ``--x`` / ``--no-x``."""
    from dataclasses import MISSING, fields

    for f in fields(config_cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kw = {"help": meta["help"], **{k: meta[k] for k in ("choices", "nargs", "metavar", "required") if k in meta}}
        if "type" in meta:
            kw["type"] = globals()[meta["type"]]
        if meta.get("positional"):
            parser.add_argument(f.name, **kw)
            continue
        default = None if f.default is MISSING else f.default
        if isinstance(default, bool):
            parser.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction, default=default, help=meta["help"])
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, **kw)


def config_from_args(args: argparse.Namespace, config_cls):
    """The config dataclass of parsed arguments (fields not on the command line keep their defaults)."""
    from dataclasses import fields

    return config_cls(**{f.name: getattr(args, f.name) for f in fields(config_cls) if f.metadata.get("cli", True)})
