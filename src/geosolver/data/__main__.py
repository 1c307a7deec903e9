"""``python -m geosolver.data --dataset KIND --root ROOT [...]``: read a dataset and print a summary.

With ``--out DIR`` it also writes ``DIR/table.parquet``, ``DIR/skipped.csv`` and ``DIR/config.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from geosolver.data import add_dataset_arguments, read_dataset_from_args
from geosolver.errors import GeosolverError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m geosolver.data", description="Read a dataset and summarise it.")
    add_dataset_arguments(p)
    p.add_argument("--out", default=None, help="write table.parquet, skipped.csv and config.json here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table = read_dataset_from_args(args)
    except GeosolverError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    skipped = table.attrs["skipped"]
    print(f"{len(table)} usable rows, {len(skipped)} skipped; columns: {list(table.columns)}")
    if len(skipped):
        print("skipped by reason:")
        print(skipped["reason"].str.split(":").str[0].value_counts().to_string())
    print(table.head(5).to_string())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        info = table.attrs["dataset"]
        table.attrs = {}
        table.to_parquet(out / "table.parquet", index=False)
        skipped.to_csv(out / "skipped.csv", index=False)
        (out / "config.json").write_text(json.dumps({"command": "geosolver.data", **vars(args), "dataset": info}, indent=2, default=str))
        print(f"wrote {out}/table.parquet, skipped.csv, config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
