"""``geosolver download``: OSV5M and model snapshots from the Hugging Face hub (logic in :mod:`geosolver.hub`)."""

from __future__ import annotations

import argparse

from geosolver.cli import summary
from geosolver.cli.args import positive_float, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "download", help=summary("download"),
        description="Download from the Hugging Face hub. Resumable and idempotent: a second run fetches nothing; a run that was killed, interrupted (Ctrl-C) or cut off resumes each unfinished file from its partial bytes (HTTP Range), and every file is checked against the hub's sha256 before it is put in place.",
    )
    dsub = p.add_subparsers(dest="download_command", metavar="WHAT")

    o = dsub.add_parser(
        "osv5m", help="the OSV5M dataset (osv5m/osv5m) in its published layout",
        description="Download osv5m/osv5m into ROOT: test.csv / train.csv and images/<split>/NN.zip, where "
        "`geosolver embed --dataset osv5m --root ROOT` and read_dataset('osv5m', ROOT, split=...) read them "
        "(zips are read in place; --extract unpacks them). Zips already unpacked, by --extract or by the dataset "
        "authors' script (snapshot_download, then each zip extracted into images/<split>/ and deleted), count as present.",
    )
    o.add_argument("--root", required=True, help="dataset root directory (created)")
    o.add_argument("--split", choices=("test", "train", "all"), default="test", help="which split(s) (default test)")
    o.add_argument("--shards", type=positive_int, default=None, help="only the first N image zips of each split")
    ex = o.add_mutually_exclusive_group()
    ex.add_argument("--extract", action="store_true",
                    help="unpack each zip to images/<split>/NN/ and delete the zip (needs 2x the zip's size while unpacking)")
    ex.add_argument("--keep-zips", action="store_true", help="keep the zips, read in place (the default)")
    o.add_argument("--dry-run", action="store_true", help="list the files and total size from the hub's file list; download nothing")
    o.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    o.add_argument("--workers", type=positive_int, default=4, help="files downloaded in parallel (default 4)")
    o.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to wait for the hub's first answer (default 10)")
    o.add_argument("--no-check", action="store_true", help="do not read the result back with the OSV5M reader")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.set_defaults(func=run_osv5m)

    m = dsub.add_parser(
        "model", help="a model snapshot, for offline use (HF_HUB_OFFLINE=1)",
        description="Download a model (an alias such as streetclip, clip-vit-l-14-336, or any hub id org/name) into "
        "the HF cache or --local-dir, and print the path to pass as --model.",
    )
    m.add_argument("name", help="alias or hub id")
    m.add_argument("--local-dir", default=None, help="download into this directory instead of the HF cache")
    m.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    m.add_argument("--dry-run", action="store_true", help="list the files and total size; download nothing")
    m.add_argument("--workers", type=positive_int, default=4, help="files downloaded in parallel (default 4)")
    m.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to wait for the hub's first answer (default 10)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_model)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _summary(res, what: str) -> None:
    """What was (``--dry-run``: would be) fetched: the same file list the transfer and its bar count."""
    from geosolver.hub import file_table, human_bytes

    n_todo = len(res.selected) - len(res.present)
    resumed = f", {human_bytes(res.bytes_partial)} of it already in partial files (resumed)" if res.bytes_partial else ""
    if res.dry_run:
        print(file_table(res.selected, res.present))
        print(f"{what} @ {res.sha[:12]}: {len(res.selected)} file(s), {human_bytes(res.bytes_total)} in all; "
              f"{n_todo} to fetch ({human_bytes(res.bytes_to_fetch)}{resumed}), "
              f"{len(res.present)} already present in {res.path}")
        return
    rate = f" ({human_bytes(res.bytes_received / res.seconds)}/s)" if res.bytes_received and res.seconds > 0 else ""
    print(f"{what} @ {res.sha[:12]}: fetched {len(res.fetched)} file(s), {human_bytes(res.bytes_to_fetch)}{resumed}; "
          f"received {human_bytes(res.bytes_received)} in {res.seconds:.1f}s{rate}; {len(res.present)} already present"
          + (f"; extracted {len(res.extracted)} zip(s)" if res.extracted else "")
          + (f"; removed {res.removed_partials[0]} partial file(s) ({human_bytes(res.removed_partials[1])}) of an "
             f"interrupted huggingface_hub download" if res.removed_partials[0] else ""))


def run_osv5m(args: argparse.Namespace) -> int:
    from geosolver.hub import download_osv5m

    res = download_osv5m(args.root, split=args.split, shards=args.shards, extract=args.extract, dry_run=args.dry_run,
                         revision=args.revision, workers=args.workers, progress=not args.no_progress, timeout=args.timeout)
    _summary(res, "osv5m")
    if args.dry_run or args.no_check:
        return 0
    from geosolver.data import read_dataset

    for s in (("test", "train") if args.split == "all" else (args.split,)):
        table = read_dataset("osv5m", res.path, split=s)
        skipped = table.attrs.get("skipped")
        n_skip = 0 if skipped is None else len(skipped)
        print(f"read_dataset('osv5m', {str(res.path)!r}, split={s!r}): {len(table):,} images"
              + (f" ({n_skip:,} CSV rows have no image in the downloaded zips)" if n_skip else ""))
    print(f"root: {res.path}")
    return 0


def run_model(args: argparse.Namespace) -> int:
    from geosolver.hub import download_model, model_repo_id

    res = download_model(args.name, local_dir=args.local_dir, revision=args.revision, dry_run=args.dry_run,
                         workers=args.workers, progress=not args.no_progress, timeout=args.timeout)
    _summary(res, model_repo_id(args.name))
    if not args.dry_run:
        print(f"model path (pass as --model; works with HF_HUB_OFFLINE=1): {res.path}")
        print(res.path)
    return 0
