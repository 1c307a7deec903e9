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
    add_dataset_arguments(p, required=False)
    p.add_argument("--model", default="streetclip", help="encoder name, hub id or local directory (default: streetclip)")
    p.add_argument("--out", required=True, help="output store directory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="decode/preprocess worker processes (default: by device)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--shard-size", type=int, default=None, help="input rows per shard (default 10000)")
    p.add_argument("--tta", choices=["flip", "d4"], default=None, help="average embeddings over flips (2) or rotations+flips (8)")
    p.add_argument("--no-progress", action="store_true")
    s = p.add_argument_group("scale-out (see geosolver.scale)")
    s.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray: Ray Data decode tasks + embedding actors")
    s.add_argument("--ray-address", default=None, help="ray.init address (auto = the running cluster; default: start a local Ray)")
    s.add_argument("--ray-actors", type=int, default=None, help="embedding actors (default: the cluster's GPUs, else 1)")
    s.add_argument("--rank", type=int, default=None, help="this process's rank (default: $RANK from torchrun/accelerate)")
    s.add_argument("--world-size", type=int, default=None, help="number of ranks (default: $WORLD_SIZE)")
    s.add_argument("--merge-only", action="store_true", help="only merge the chunks the ranks committed into the manifest (needs just --out)")
    p.set_defaults(func=run)


def _ranks(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from --rank/--world-size, else from torchrun/accelerate env vars."""
    from geosolver.embed import EmbedError
    from geosolver.scale.ranks import rank_from_env

    if args.rank is not None or args.world_size is not None:
        if args.rank is None or args.world_size is None:
            raise EmbedError("--rank and --world-size go together")
        return (args.rank, args.world_size, args.rank) if args.world_size > 1 else None
    return rank_from_env()


def run(args: argparse.Namespace) -> int:
    from geosolver.data import read_dataset_from_args
    from geosolver.embed import EmbedError, embed_table
    from geosolver.encoders import load_encoder

    if args.merge_only:
        from geosolver.scale.chunks import merge_chunks

        st = merge_chunks(args.out)
        print(f"merged {len(st.shards)} shard(s) into {st.path}: {len(st)} rows, {st.manifest.get('n_failures', 0)} failure(s)")
        return 0
    if args.root is None:
        raise EmbedError("--root is required (except with --merge-only)")
    ranks = _ranks(args)
    if ranks is not None and args.engine == "ray":
        raise EmbedError("--engine ray schedules its own workers; do not combine it with ranks (RANK/WORLD_SIZE)")
    if ranks is not None and args.device == "auto":
        import torch

        if torch.cuda.is_available():
            args.device = f"cuda:{ranks[2] % torch.cuda.device_count()}"
    table = read_dataset_from_args(args)
    skipped = table.attrs.get("skipped")
    if skipped is not None and len(skipped):
        print(f"reader skipped {len(skipped)} row(s) (first: {skipped.iloc[0]['id']}: {skipped.iloc[0]['reason']})", file=sys.stderr)
    config = {"command": "embed", **{k: v for k, v in vars(args).items() if k != "func"}}
    if args.engine == "ray":
        from geosolver.scale.ray_engine import embed_table_ray

        enc = load_encoder(args.model, device="cpu", precision="fp32")  # driver: identity + preprocessor only
        res = embed_table_ray(
            table, enc, args.model, args.out, device=args.device, precision=args.precision, batch_size=args.batch_size,
            shard_size=args.shard_size, tta=args.tta, num_actors=args.ray_actors, ray_address=args.ray_address,
            progress=not args.no_progress, config=config, skipped=skipped,
        )
        _report(res)
        return 0
    enc = load_encoder(args.model, device=args.device, precision=args.precision)
    if ranks is not None:
        from geosolver.scale.ranks import embed_rank

        rank, world, _ = ranks
        res = embed_rank(
            table, enc, args.out, rank, world, batch_size=args.batch_size, num_workers=args.num_workers or 0,
            shard_size=args.shard_size, tta=args.tta, progress=not args.no_progress, config=config, skipped=skipped,
        )
        print(f"rank {rank}/{world}: ", end="")
        _report(res)
        return 0
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
    _report(res)
    return 0


def _report(res) -> None:
    print(
        f"embedded {res.rows_embedded} image(s) in {res.seconds:.1f}s ({res.images_per_s:.1f} img/s), "
        f"{res.failures} failure(s); store {res.store.path} now holds {len(res.store)} rows"
    )
