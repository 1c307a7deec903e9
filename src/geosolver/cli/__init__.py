"""The ``geosolver`` command line: a thin layer over the Python API.

Each sub-command lives in its own module under ``geosolver.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import sys

from geosolver.errors import UserError  # re-exported: raise it for a nonsensical option

__all__ = ["UserError", "build_parser", "main", "summary"]

#: every sub-command: ``(name, module, one-line summary)``, in the order of ``geosolver --help``. The
#: summary lets ``geosolver --help`` list the commands without importing them (their parsers pull in
#: numpy, pandas or transformers), and each command's parser takes its ``help=`` from here
#: (:func:`summary`); ``tests/test_cli_startup.py`` checks they agree.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "geosolver.cli.demo_cmd", "run the whole pipeline on an offline terrain world and write demo/report.html"),
    ("embed", "geosolver.cli.embed_cmd", "embed a dataset (OSV5M, folder+CSV, EXIF photos, webdataset) into a store"),
    ("info", "geosolver.cli.info_cmd", "print what an embedding store holds"),
    ("index", "geosolver.cli.index_cmd", "build a kNN index (faiss) over an embedding store"),
    ("locate", "geosolver.cli.locate_cmd", "geolocate photos against a gallery store, or zero-shot against place names"),
    ("evaluate", "geosolver.cli.evaluate_cmd", "locate every query of a store in a gallery and report Geoscore etc."),
    ("compare", "geosolver.cli.evaluate_cmd", "several evaluation runs in one table"),
    ("head", "geosolver.cli.head_cmd", "train a location head (geocells, flow on the sphere) on a store's embeddings"),
    ("analyze", "geosolver.cli.analyze_cmd", "how well do encoders' embeddings reflect geography? (plots, correlations, diagnostics)"),
    ("enrich", "geosolver.cli.enrich_cmd", "add offline geographic metadata (country, climate, land cover, land, cell) to a store"),
    ("curate", "geosolver.cli.curate_cmd", "curate a small, representative gallery from a store"),
    ("terrain", "geosolver.cli.terrain_cmd", "build the offline terrain world (a folder + CSV dataset of rendered map tiles)"),
    ("train", "geosolver.cli.train_cmd", "fine-tune an encoder so similarity falls with distance (distance-consistency, "
     "geo-contrastive, rank-n-contrast, soft-contrastive)"),
    ("serve", "geosolver.cli.serve_cmd", "web app: drop a photo, see the guess on a map (+ JSON API, Play mode)"),
    ("download", "geosolver.cli.download_cmd", "download OSV5M or a model from the Hugging Face hub (resumable)"),
    ("study", "geosolver.cli.study_cmd", "the founding study on OSV5M: encoders, analysis, curation, fine-tuning, one report"),
)
#: the command modules, each once, in order.
COMMAND_MODULES = list(dict.fromkeys(module for _, module, _ in COMMANDS))


def summary(command: str) -> str:
    """The one-line summary of ``command`` in :data:`COMMANDS`: its parser's ``help=``, written once."""
    return next(text for name, _, text in COMMANDS if name == command)


def build_parser(commands: set[str] | None = None) -> argparse.ArgumentParser:
    """The ``geosolver`` parser.

    Args:
        commands: names of the sub-commands to build in full (their module's ``register``);
            every other one gets a bare entry with its summary, enough for ``geosolver --help``.
            ``None``: all of them (what the tests and the docs inspect).
    """
    from geosolver import __version__

    p = argparse.ArgumentParser(prog="geosolver", description="Geolocate photos by retrieval over image embeddings.")
    p.add_argument("--version", action="version", version=f"geosolver {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    full = {module for name, module, _ in COMMANDS if commands is None or name in commands}
    registered: set[str] = set()
    for name, module, text in COMMANDS:
        if module not in full:
            sub.add_parser(name, help=text, add_help=False)
            continue
        if module in registered:  # a module that registers several commands (evaluate + compare)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # command not built yet in this checkout
                continue
            raise
        mod.register(sub)
        registered.add(module)
    return p


def _command_in(argv: list[str]) -> str | None:
    """The sub-command named in ``argv``: the first word that is not a top-level option (the
    top-level options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def os_error_line(e: OSError) -> str:
    """One line for an ``OSError`` that escaped a command: what the errno means and which file(s),
    e.g. ``No space left on device (ENOSPC): /data/store/shard-00003.npy``."""
    what = os.strerror(e.errno) if e.errno else (e.strerror or str(e) or type(e).__name__)
    if e.errno in errno.errorcode:
        what += f" ({errno.errorcode[e.errno]})"
    files = [str(f) for f in (e.filename, e.filename2) if f is not None]
    line = what + (": " + " -> ".join(files) if files else "")
    if not e.errno and not files and str(e) and str(e) != what:
        line += f": {e}"
    return " ".join(line.split())  # one line, whatever the file name holds


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser({_command_in(argv)} - {None})  # only the named command's parser is built
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from geosolver.errors import GeosolverError

    if getattr(args, "max_photo_mb", None):  # --max-photo-mb: the per-photo read cap, workers included
        from geosolver.images import set_max_photo_mb

        set_max_photo_mb(args.max_photo_mb)
    allowed = contextlib.nullcontext()
    if getattr(args, "overwrite", False):  # --overwrite: every run folder the command opens may be written into
        from geosolver.rundir import overwriting

        allowed = overwriting()
    try:
        with allowed:
            rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit
        return rc
    except (GeosolverError, FileNotFoundError) as e:
        print(f"geosolver {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `geosolver info STORE | head -1`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # disk full, read-only file system, permission denied, quota...: one line
        print(f"geosolver {args.command}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geosolver {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
