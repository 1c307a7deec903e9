"""The ``geosolver`` command line: a thin layer over the Python API.

Each sub-command lives in its own module under ``geosolver.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed ``argparse.Namespace`` and returning an exit code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from geosolver.errors import UserError  # re-exported: raise it for a nonsensical option

__all__ = ["UserError", "build_parser", "main"]

# Order here is the order of `geosolver --help`.
COMMAND_MODULES = [
    "geosolver.cli.demo_cmd",
    "geosolver.cli.embed_cmd",
    "geosolver.cli.info_cmd",
    "geosolver.cli.index_cmd",
    "geosolver.cli.locate_cmd",
    "geosolver.cli.evaluate_cmd",
    "geosolver.cli.head_cmd",
    "geosolver.cli.analyze_cmd",
    "geosolver.cli.enrich_cmd",
    "geosolver.cli.curate_cmd",
    "geosolver.cli.terrain_cmd",
    "geosolver.cli.train_cmd",
    "geosolver.cli.serve_cmd",
    "geosolver.cli.download_cmd",
    "geosolver.cli.study_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    from geosolver import __version__

    p = argparse.ArgumentParser(prog="geosolver", description="Geolocate photos by retrieval over image embeddings.")
    p.add_argument("--version", action="version", version=f"geosolver {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not built yet in this checkout
                continue
            raise
        mod.register(sub)
    return p


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
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    from geosolver.errors import GeosolverError

    try:
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
