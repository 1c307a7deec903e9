"""Reading OSV5M's ``train.csv`` at full size: the old reader (every one of the 32 columns) vs the new
one (only the columns asked for, strings kept in Arrow), time and peak memory.

    python benchmarks/osv5m_csv.py                   # 4 900 000 rows (~2.9 GB), as OSV5M's train.csv
    python benchmarks/osv5m_csv.py --rows 1000000    # quicker

A file with OSV5M's published header (the 32 columns of ``tests/helpers_data.OSV5M_COLUMNS``) and rows
of the real file's average width (~590 bytes: 2.9 GB / 4.9 M rows; the long column is the signed
``thumb_original_url``) is synthesized in a temporary folder (or ``--dir``) and deleted afterwards.
Each reader runs in its own fresh subprocess; its peak RSS is that child's own ``ru_maxrss`` (``os.wait4``).
"seconds" is the read's wall time; "CPU s" the child's whole user + system time (imports and, for the
``*-read`` rows, building the stand-in index included) — on a loaded machine the better guide to the
time the read takes on an idle one.

Readers:

* ``old``: the reader's CSV step before this change — one whole-file ``pyarrow.csv.read_csv`` of every
  column (``STRING_COLUMNS`` as strings), converted to pandas;
* ``new``: :func:`geosolver.data.osv5m.read_osv5m_csv` with the columns the study keeps
  (:data:`geosolver.study.STUDY_COLUMNS`);
* ``new-all``: the same function asked for every column (what ``embed --dataset osv5m`` keeps);
* ``study-read``: the study's whole read of the split, ``read_osv5m(root, "train", columns=STUDY_COLUMNS,
  limit=100_000)`` (its default train slice: coordinates parsed, ids matched to images, the table
  assembled), with the zip scan replaced by an in-memory index of every id (built before the clock
  starts; its memory, ~ as large as the real zip index, counts in the peak);
* ``full-read``: the same without a limit (all 4.9 M rows in the table).

Target (issue 20): the study's read at <= 10 s and <= 1.5 GB peak for 4.9 M rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

FULL_ROWS = 4_900_000
CHUNK = 250_000
#: target average row width (bytes): OSV5M's train.csv is ~2.9 GB for ~4.9 M rows
ROW_BYTES = 590


def synthesize(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` rows with OSV5M's header, written in chunks (vectorised; ~1 min for 4.9 M rows)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    from helpers_data import OSV5M_COLUMNS

    rng = np.random.default_rng(seed)
    countries = np.array(["FR", "US", "BR", "NA", "JP", "ZA", "AU", "DE", "IN", "RU"])

    def s(a) -> pa.Array:
        return pc.cast(pa.array(a), pa.string())

    def join(*parts) -> pa.Array:
        return pc.binary_join_element_wise(*parts, "")

    with pcsv.CSVWriter(path, pa.schema([(c, pa.string()) for c in OSV5M_COLUMNS])) as w:
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            i = np.arange(start, start + n, dtype=np.int64)
            ids = s(300_000_000_000_000 + i * 7919)
            lat, lon = rng.uniform(-60, 70, n).round(6), rng.uniform(-180, 180, n).round(6)
            cc = s(countries[i % len(countries)])
            region, sub, city = join("Region ", s(i % 3000)), join("Sub ", s(i % 40000)), join("City ", s(i % 90000))
            sig = s(rng.integers(10**17, 10**18, n))
            url = join("https://scontent.xx.fbcdn.net/m1/v/t6/An_", sig, "/thumb-original?stp=s1024x768&ccb=10-5&oh=",
                       sig, sig, sig, "&oe=66F2E1A9&_nc_sid=201bca&_nc_cat=", s(i % 100), "&_nc_ohc=", sig, sig, sig)
            cols = {
                "id": ids, "latitude": s(lat), "longitude": s(lon), "thumb_original_url": url, "country": cc,
                "sequence": join("seq", sig), "captured_at": s(1_500_000_000_000 + i * 1000),
                "lon_bin": s(i % 100), "lat_bin": s((i * 3) % 100), "cell": join("(", s(i % 100), ", ", s((i * 3) % 100), ")"),
                "region": region, "sub-region": sub, "city": city, "land_cover": s((i % 12).astype(float)),
                "road_index": s(rng.uniform(0, 10, n).round(4)), "drive_side": s((i % 2).astype(float)),
                "climate": s((i % 30).astype(float)), "soil": s((i % 14).astype(float)),
                "dist_sea": s(rng.uniform(0, 300, n).round(6)),
                **{c: s(i % k) for c, k in zip(OSV5M_COLUMNS[19:26], (5, 7, 11, 13, 17, 19, 23))},
                "unique_region": join(region, "_", cc), "unique_sub-region": join(sub, "_", region, "_", cc),
                "unique_city": join(city, "_", sub, "_", region, "_", cc), "unique_country": cc,
                "creator_username": join("user", s(i % 50000)), "creator_id": s(10**15 + i % 50000),
            }
            w.write_table(pa.table([cols[c] for c in OSV5M_COLUMNS], names=OSV5M_COLUMNS))


CHILD = r"""
import sys, time
sys.path[:0] = [{src!r}]
reader, path = sys.argv[1], sys.argv[2]
if reader in ("study-read", "full-read"):  # the whole reader, with an image index of every id (as the zip scan would give)
    from pathlib import Path
    import pandas as pd
    from geosolver.data import osv5m
    from geosolver.data.common import read_csv
    ids = read_csv(path, ["id"], columns=["id"])["id"]
    index = pd.DataFrame({{"id": ids, "source": "zip:///data/osv5m/images/train/00.zip::" + ids + ".jpg"}})
    del ids
    osv5m.index_images = lambda image_dir: index
    (Path(path).parent / "images" / "train").mkdir(parents=True, exist_ok=True)
t = time.perf_counter()
if reader in ("study-read", "full-read"):
    from geosolver.study import STUDY_COLUMNS, StudyConfig
    limit = StudyConfig("", "").train_limit if reader == "study-read" else None
    df = osv5m.read_osv5m(Path(path).parent, split="train", columns=STUDY_COLUMNS, limit=limit)
elif reader == "old":  # the CSV step as it was: one whole-file pyarrow read of every column
    import pyarrow as pa
    import pyarrow.csv as pcsv
    from geosolver.data.osv5m import STRING_COLUMNS
    want = {{c.lower() for c in STRING_COLUMNS}}
    with pcsv.open_csv(path) as r:
        names = r.schema.names
    table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={{c: pa.string() for c in names if c.lower() in want}}, null_values=[""], strings_can_be_null=True))
    df = table.to_pandas()
else:
    from geosolver.data.osv5m import read_osv5m_csv
    if reader == "new":
        from geosolver.study import STUDY_COLUMNS
        df = read_osv5m_csv(path, STUDY_COLUMNS)
    else:
        df = read_osv5m_csv(path)
print(len(df), len(df.columns), time.perf_counter() - t)
"""


def measure(reader: str, path: Path) -> tuple[int, int, float, float, float]:
    """(rows, columns, seconds, CPU seconds of the whole child, peak RSS in GB) of one reader in a fresh
    subprocess (its own ``ru_maxrss`` and CPU time, from ``os.wait4``)."""
    p = subprocess.Popen([sys.executable, "-c", CHILD.format(src=str(REPO / "src")), reader, str(path)],
                         stdout=subprocess.PIPE, text=True)
    out = p.stdout.read().split()
    p.stdout.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"reader {reader} failed (exit {p.returncode})")
    return int(out[0]), int(out[1]), float(out[2]), usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=FULL_ROWS)
    ap.add_argument("--dir", default=None, help="where to write the temporary CSV (default: the system temp dir)")
    ap.add_argument("--readers", default="new,study-read,full-read,old,new-all", help="comma-separated: new, study-read, full-read, old, new-all (measured in this order)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="osv5m_csv_", dir=args.dir))
    try:
        path = tmp / "train.csv"
        t = time.perf_counter()
        synthesize(path, args.rows)
        print(f"synthesized {args.rows:,} rows, {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s "
              f"({path})", flush=True)
        print("| reader | rows | columns | seconds | CPU s (child) | peak RSS (GB) |\n|---|---|---|---|---|---|", flush=True)
        for reader in args.readers.split(","):
            rows, cols, sec, cpu, peak = measure(reader, path)
            print(f"| {reader} | {rows:,} | {cols} | {sec:.1f} | {cpu:.1f} | {peak:.2f} |", flush=True)
        print(f"load average: {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
