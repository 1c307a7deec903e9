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


def port(text: str) -> int:
    """A TCP port, 1–65535."""
    v = _number(int, text)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {v}")
    return v


def add_config_arguments(parser, config_cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of a config dataclass, from the field's type, default and
    ``metadata`` (``help`` plus further ``add_argument`` keywords such as ``choices``): a setting
    is declared once, in the dataclass. A field without a default is a required option.

    Supports ``str``, ``int``, ``float`` and ``bool`` fields (``bool``: a ``--flag``); ints and
    floats are parsed as numbers here and checked by the config itself."""
    import dataclasses

    kinds = {"str": str, "int": int, "float": float, "bool": bool}
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        name = "--" + f.name.replace("_", "-")
        typ = kinds[str(f.type).split(" ")[0]]
        if typ is bool:
            parser.add_argument(name, action="store_true", help=meta.pop("help", None), **meta)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default
        help_text = meta.pop("help", "") + ("" if required else f" (default {default})")
        parser.add_argument(name, type=_config_type(typ), default=default, required=required,
                            help=help_text.replace("%", "%%"), **meta)


def _config_type(typ):
    if typ is str:
        return str
    return lambda text: _number(typ, text)
