"""``python -m geosolver.data --dataset KIND --root ROOT [...]``: read a dataset and print a summary.

With ``--out DIR`` it also writes ``DIR/table.parquet``, ``DIR/skipped.csv`` and ``DIR/config.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from geosolver.data import add_dataset_arguments, read_dataset_from_args
from geosolver.errors import GeosolverError
from geosolver.rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m geosolver.data", description="Read a dataset and summarise it.")
    add_dataset_arguments(p)
    p.add_argument("--out", default=None, help="write table.parquet, skipped.csv and config.json here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table = read_dataset_from_args(args)
        run = RunDir(args.out, "geosolver.data") if args.out else None
    except GeosolverError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = table.attrs["skipped"]
    print(f"{len(table)} usable rows, {len(skipped)} skipped; columns: {list(table.columns)}")
    if len(skipped):
        print("skipped by reason:")
        print(skipped["reason"].str.split(":").str[0].value_counts().to_string())
    print(table.head(5).to_string())
    if run is not None:
        run.write_parquet("table.parquet", table)
        run.write_text("skipped.csv", skipped.to_csv(index=False))
        run.write_config({**vars(args), "dataset": table.attrs["dataset"]})
        print(f"wrote {run.path}/table.parquet, skipped.csv, config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
