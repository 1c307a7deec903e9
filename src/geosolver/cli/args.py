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


def fraction(text: str) -> float:
    """A number in (0, 1] (a recall target, a share)."""
    v = _number(float, text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return v


def comma_list(text: str) -> list[str]:
    """Comma-separated names (``"a, b"`` → ``["a", "b"]``)."""
    return [t.strip() for t in text.split(",")]


def one_of(choices):
    """A value type accepting one of ``choices`` (for the items of :func:`csv_of`)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


def csv_of(kind):
    """A value type for comma-separated ``kind`` values (each checked by ``kind``; at least one;
    duplicates dropped, order kept): ``csv_of(positive_int)("5,10,5")`` → ``[5, 10]``."""

    def parse(text: str) -> list:
        try:
            vals = [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"expected one or more comma-separated values, got {text!r}")
        return list(dict.fromkeys(vals))

    return parse


#: comma-separated lists of the value types above (a sweep of ``k``, temperatures, weights, names)
positive_int_list = csv_of(positive_int)
positive_float_list = csv_of(positive_float)
non_negative_float_list = csv_of(non_negative_float)
name_list = csv_of(str)


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
    """One option per field of a job's config dataclass (``pq_m`` → ``--pq-m``), so a setting is
    declared once, in the dataclass (``skip``: fields left off the command line).

    Each field's ``metadata`` may give: ``help``; ``flag`` (the option's name instead of
    ``--field-name``; ``None``: not on the command line — ``cli=False`` says the same);
    ``kind`` or ``type`` (the name of a value type of this module, or ``"float"``/``"int"``;
    default: the field's annotation, ``int``/``float`` parsed as numbers, anything else as text);
    ``item_choices`` (a comma-separated list of these names, as :func:`csv_of` ``(one_of(...))``);
    ``choices``, ``nargs``, ``metavar``, ``required``; ``positional`` (an argument, not an option);
    ``group`` (the title of the argument group the option is listed under in ``--help``);
    ``given_only`` (the option is absent from the parsed arguments unless given, so the command
    can tell "not given" from the default, and :func:`config_from_args` keeps the field's default).
    A field without a default is required. A boolean is ``--x`` / ``--no-x`` (with ``flag``: only
    that flag, flipping the default). A help text that does not name its default gets
    ``(default X)`` appended.
    """
    import dataclasses

    named = {"float": float, "int": int}
    groups: dict[str, argparse._ArgumentGroup] = {}
    top = parser
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if f.name in skip or not meta.get("cli", True) or ("flag" in meta and meta["flag"] is None):
            continue
        if meta.get("group") and meta["group"] not in groups:
            groups[meta["group"]] = top.add_argument_group(meta["group"])
        parser = groups[meta["group"]] if meta.get("group") else top
        name = f.name.replace("_", "-")
        help_text = meta.get("help") or ""
        has_default = f.default is not dataclasses.MISSING
        if has_default and isinstance(f.default, bool):
            if "flag" in meta:
                parser.add_argument(meta["flag"], dest=f.name, action="store_false" if f.default else "store_true", help=help_text or None)
            else:
                parser.add_argument(f"--{name}", dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                    help=help_text or None)
            continue
        kw = {k: meta[k] for k in ("choices", "nargs", "metavar", "required") if k in meta}
        type_name = meta.get("kind", meta.get("type"))
        annotation = str(f.type).split(" ")[0]
        if meta.get("item_choices"):
            kw["type"] = csv_of(one_of(meta["item_choices"]))
        elif type_name is not None:
            kw["type"] = named.get(type_name) or globals()[type_name]
        elif annotation in ("int", "float"):
            kw["type"] = lambda text, t=named[annotation]: _number(t, text)
        if has_default and f.default is not None and "default" not in help_text:
            help_text += f" (default {f.default})"
        kw["help"] = help_text.replace("%", "%%") or None
        if meta.get("positional"):
            parser.add_argument(f.name, **kw)
            continue
        if meta.get("given_only"):
            kw["default"] = argparse.SUPPRESS
        elif has_default:
            kw["default"] = f.default
        elif f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            kw.setdefault("required", True)
        parser.add_argument(meta.get("flag", f"--{name}"), dest=f.name, **kw)


def config_from_args(config_cls, args: argparse.Namespace):
    """The ``config_cls`` of parsed arguments: the fields the command line sets, defaults for the rest."""
    import dataclasses

    given = vars(args)
    return config_cls(**{f.name: given[f.name] for f in dataclasses.fields(config_cls) if f.name in given})
