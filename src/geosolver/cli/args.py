"""argparse value types and options shared by every sub-command: a bad number is refused at the
parser with one line naming the option's rule (exit code 2), before any work starts."""

from __future__ import annotations

import argparse
import math
import re


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


def bool_text(text: str) -> bool:
    """``yes``/``no``, ``true``/``false``, ``1``/``0``, ``on``/``off`` (any case) as a boolean."""
    word = text.strip().lower()
    if word in ("yes", "y", "true", "t", "1", "on"):
        return True
    if word in ("no", "n", "false", "f", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not yes/no (true/false, 1/0)")


def _default_text(value) -> str:
    """A default as the user would type it: a list as its space-separated items."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _element_annotation(annotation: str) -> str | None:
    """``"list[float]"`` / ``"tuple[int, ...]"`` → ``"float"`` / ``"int"``; anything else → ``None``."""
    m = re.fullmatch(r"(?:list|tuple)\[(\w+)(?:, \.\.\.)?\]", annotation)
    return m.group(1) if m else None


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = (),
                         legacy_spellings: bool = False) -> None:
    """One option per field of a job's config dataclass (``pq_m`` → ``--pq-m``), so a setting is
    declared once, in the dataclass (``skip``: fields left off the command line).

    Each field's ``metadata`` may give: ``help``; ``flag`` (the option's name instead of
    ``--field-name``; ``None``: not on the command line — ``cli=False`` says the same);
    ``aliases`` (further option strings, e.g. ``["--data"]``); ``kind`` or ``type`` (the name of a
    value type of this module, or ``"float"``/``"int"``; default: the field's annotation,
    ``int``/``float`` parsed as numbers, anything else as text); ``item_choices`` (a
    comma-separated list of these names, as :func:`csv_of` ``(one_of(...))``); ``choices``,
    ``nargs``, ``metavar``, ``required``, ``action`` (an ``argparse.Action`` class); ``positional``
    (an argument, not an option); ``group`` (the title of the argument group the option is listed
    under in ``--help``); ``given_only`` (the option is absent from the parsed arguments unless
    given, so the command can tell "not given" from the default, and :func:`config_from_args`
    keeps the field's default). A ``list[X]`` / ``tuple[X, ...]`` field takes one or more values
    (``nargs="+"``) of type X. A field without a default is required; one with a
    ``default_factory`` keeps it (the option is absent from the namespace until given). A boolean
    is ``--x`` / ``--no-x`` (with ``flag``: only that flag, flipping the default). A help text that
    does not name its default gets ``(default X)`` appended.

    ``legacy_spellings``: also accept what ``transformers.HfArgumentParser`` accepted for the same
    dataclass — ``--field_name`` beside ``--field-name``, ``--no_x`` beside ``--no-x``, and a
    boolean's optional value (``--x false``).
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
        spellings = [meta.get("flag", f"--{name}"), *meta.get("aliases", ())]
        if legacy_spellings and "_" in f.name and "flag" not in meta:
            spellings.append(f"--{f.name}")
        help_text = meta.get("help") or ""
        has_default = f.default is not dataclasses.MISSING
        if has_default and isinstance(f.default, bool):
            if "flag" in meta:
                parser.add_argument(*spellings, dest=f.name, action="store_false" if f.default else "store_true", help=help_text or None)
            elif legacy_spellings:  # --x [BOOL], and --no-x / --no_x
                parser.add_argument(*spellings, dest=f.name, nargs="?", const=True, type=bool_text, default=f.default,
                                    metavar="yes|no", help=(help_text + f" (default {'yes' if f.default else 'no'})").replace("%", "%%"))
                parser.add_argument(*dict.fromkeys((f"--no-{name}", f"--no_{f.name}")), dest=f.name,
                                    action="store_false", help=argparse.SUPPRESS)
            else:
                parser.add_argument(*spellings, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                    help=help_text or None)
            continue
        kw = {k: meta[k] for k in ("choices", "nargs", "metavar", "required", "action") if k in meta}
        type_name = meta.get("kind", meta.get("type"))
        annotation = str(f.type).split(" ")[0]
        element = _element_annotation(annotation)
        if element is not None and not meta.get("item_choices"):
            kw.setdefault("nargs", "+")
            annotation = element
        if meta.get("item_choices"):
            kw["type"] = csv_of(one_of(meta["item_choices"]))
        elif type_name is not None:
            kw["type"] = named.get(type_name) or globals()[type_name]
        elif annotation in ("int", "float"):
            kw["type"] = lambda text, t=named[annotation]: _number(t, text)
        default = f.default if has_default else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if default is not None and "default" not in help_text:
            help_text += f" (default {_default_text(default)})"
        kw["help"] = help_text.replace("%", "%%") or None
        if meta.get("positional"):
            parser.add_argument(f.name, **kw)
            continue
        if meta.get("given_only"):
            kw["default"] = argparse.SUPPRESS
        elif has_default:
            kw["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            kw["default"] = argparse.SUPPRESS  # the dataclass makes a fresh one
        else:
            kw.setdefault("required", True)
        parser.add_argument(*spellings, dest=f.name, **kw)


def config_from_args(config_cls, args: argparse.Namespace):
    """The ``config_cls`` of parsed arguments: the fields the command line sets, defaults for the rest."""
    import dataclasses

    given = vars(args)
    return config_cls(**{f.name: given[f.name] for f in dataclasses.fields(config_cls) if f.name in given})
