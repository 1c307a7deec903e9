"""`geosolver embed`: embed a dataset into an EmbeddingStore (resumable)."""

from __future__ import annotations

import argparse
import sys

from geosolver.data import add_dataset_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed a dataset (OSV5M, folder+CSV, EXIF photos, webdataset) into a store",
        description="Embed every image of a dataset with an encoder and write an EmbeddingStore. "
        "Re-running the same command resumes an interrupted run.",
    )
    add_dataset_arguments(p)
    p.add_argument("--model", default="streetclip", help="encoder name, hub id or local directory (default: streetclip)")
    p.add_argument("--out", required=True, help="output store directory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="decode/preprocess worker processes (default: by device)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--shard-size", type=int, default=None, help="input rows per shard (default 10000)")
    p.add_argument("--tta", choices=["flip", "d4"], default=None, help="average embeddings over flips (2) or rotations+flips (8)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.data import read_dataset_from_args
    from geosolver.embed import embed_table
    from geosolver.encoders import load_encoder

    table = read_dataset_from_args(args)
    skipped = table.attrs.get("skipped")
    if skipped is not None and len(skipped):
        print(f"reader skipped {len(skipped)} row(s) (first: {skipped.iloc[0]['id']}: {skipped.iloc[0]['reason']})", file=sys.stderr)
    enc = load_encoder(args.model, device=args.device, precision=args.precision)
    config = {"command": "embed", **{k: v for k, v in vars(args).items() if k != "func"}}
    res = embed_table(
        table,
        enc,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        shard_size=args.shard_size,
        tta=args.tta,
        progress=not args.no_progress,
        config=config,
        skipped=skipped,
    )
    print(
        f"embedded {res.rows_embedded} image(s) in {res.seconds:.1f}s ({res.images_per_s:.1f} img/s), "
        f"{res.failures} failure(s); store {res.store.path} now holds {len(res.store)} rows"
    )
    return 0
