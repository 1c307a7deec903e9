"""argparse value types and options shared by every sub-command: a bad number is refused at the
parser with one line naming the option's rule (exit code 2), before any work starts."""

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


OVERWRITE_HELP = ("write into an existing output folder that holds files this command did not write "
                  "(same-named files are replaced; nothing is deleted). Default: such a folder is refused")


def add_max_photo_option(p: argparse.ArgumentParser) -> None:
    """``--max-photo-mb`` for a command that reads photos (:func:`geosolver.images.read_photo_bytes`);
    :func:`geosolver.cli.main` sets it for the command and the worker processes it starts."""
    p.add_argument("--max-photo-mb", type=positive_float, default=None, metavar="MB",
                   help="refuse a photo (file or archive member) over MB megabytes (default 64; "
                        "env GEOSOLVER_MAX_PHOTO_MB); nothing past the cap is read")


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` for a command that writes a run folder (:class:`geosolver.rundir.RunDir`);
    :func:`geosolver.cli.main` applies it to every run folder the command opens."""
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of the dataclass ``config_cls`` (except ``skip``), so a setting is
    declared once, in the dataclass. From each field's ``metadata``: ``help``; ``flag`` (default
    ``--field-name``; ``None``: not on the command line); ``kind`` (the name of a value type of this
    module, or ``"float"``/``"int"``; default: the field's annotation, ``int``/``float`` parsed as
    numbers, anything else as text); ``choices``. A field without a default is required; a boolean
    flips its default (``False`` → ``--name``, ``True`` → ``--no-name``); a help text that does not
    name its default gets ``(default X)`` appended."""
    import dataclasses

    types = {"float": float, "int": int, "positive_int": positive_int, "non_negative_int": non_negative_int,
             "positive_float": positive_float, "non_negative_float": non_negative_float}
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        meta = f.metadata
        name = f.name.replace("_", "-")
        if f.default is not dataclasses.MISSING and isinstance(f.default, bool):
            flag = meta.get("flag", f"--no-{name}" if f.default else f"--{name}")
            if flag is not None:
                parser.add_argument(flag, dest=f.name, action="store_false" if f.default else "store_true", help=meta.get("help"))
            continue
        flag = meta.get("flag", f"--{name}")
        if flag is None:
            continue
        help_text = meta.get("help") or ""
        kw = {"dest": f.name}
        annotation = str(f.type).split(" ")[0]
        if "kind" in meta:
            kw["type"] = types[meta["kind"]]
        elif annotation in ("int", "float"):
            kw["type"] = lambda text, t=types[annotation]: _number(t, text)
        if "choices" in meta:
            kw["choices"] = meta["choices"]
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            if f.default is not None and "default" not in help_text:
                help_text += f" (default {f.default})"
        kw["help"] = help_text.replace("%", "%%") or None
        parser.add_argument(flag, **kw)


def config_from_args(config_cls, args: argparse.Namespace):
    """The ``config_cls`` of parsed arguments: the fields the command line sets, defaults for the rest."""
    import dataclasses

    given = vars(args)
    return config_cls(**{f.name: given[f.name] for f in dataclasses.fields(config_cls) if f.name in given})
