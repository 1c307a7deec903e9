"""`geosolver embed`: embed a dataset into an EmbeddingStore (resumable) — a thin call of
:func:`geosolver.embed.embed`."""

from __future__ import annotations

import argparse
import sys

from geosolver.cli import summary
from geosolver.cli.args import add_max_photo_option, non_negative_int, positive_int
from geosolver.data import add_dataset_arguments
from geosolver.encoders import DEFAULT_ENCODER, MODEL_HELP, PRECISIONS, TTA_MODES


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help=summary("embed"),
        description="Embed every image of a dataset with an encoder and write an EmbeddingStore. "
        "Re-running the same command resumes an interrupted run.",
    )
    add_dataset_arguments(p, required=False)
    p.add_argument("--model", default=DEFAULT_ENCODER, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output store directory")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per encoder batch (default 64)")
    p.add_argument("--num-workers", type=non_negative_int, default=None, help="decode/preprocess worker processes (default: by device)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="inference precision (auto: bf16 or fp16 on a GPU, fp32 on CPU)")
    p.add_argument("--shard-size", type=positive_int, default=None, help="input rows per shard (default 10000)")
    p.add_argument("--tta", choices=TTA_MODES, default=None, help="average embeddings over flips (2) or rotations+flips (8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_max_photo_option(p)
    s = p.add_argument_group("scale-out (see geosolver.embed)")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default; torchrun ranks are detected from RANK/WORLD_SIZE) or ray: a pool of embedding actors")
    s.add_argument("--ray-address", default=None, help="ray.init address (auto = the running cluster; default: start a local Ray)")
    s.add_argument("--ray-actors", type=positive_int, default=None, help="embedding actors (default: the cluster's GPUs, else 1)")
    s.add_argument("--rank", type=non_negative_int, default=None, help="this process's rank (default: $RANK from torchrun/accelerate)")
    s.add_argument("--world-size", type=positive_int, default=None, help="number of ranks (default: $WORLD_SIZE)")
    s.add_argument("--merge-only", action="store_true", help="only merge the chunks the ranks committed into the manifest (needs just --out)")
    p.set_defaults(func=run)


def _ranks(args: argparse.Namespace) -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from --rank/--world-size, else from torchrun/accelerate env vars."""
    from geosolver.embed import rank_from_env
    from geosolver.errors import UserError

    if args.rank is not None or args.world_size is not None:
        if args.rank is None or args.world_size is None:
            raise UserError("--rank and --world-size go together")
        if args.rank >= args.world_size:
            raise UserError(f"--rank {args.rank} is outside --world-size {args.world_size}")
        return (args.rank, args.world_size, args.rank) if args.world_size > 1 else None
    return rank_from_env()


def run(args: argparse.Namespace) -> int:
    from geosolver.data import read_dataset_from_args
    from geosolver.embed import embed, merge
    from geosolver.encoders import EncoderSpec
    from geosolver.errors import UserError

    if args.merge_only:
        st = merge(args.out)
        print(f"merged {len(st.shards)} shard(s) into {st.path}: {len(st)} rows, {st.manifest.get('n_failures', 0)} failure(s)")
        return 0
    if args.root is None:
        raise UserError("--root is required (except with --merge-only)")
    ranks = _ranks(args)
    if ranks is not None and args.engine == "ray":
        raise UserError("--engine ray schedules its own workers; do not combine it with ranks (RANK/WORLD_SIZE)")
    table = read_dataset_from_args(args)
    skipped = table.attrs.get("skipped")
    if skipped is not None and len(skipped):
        print(f"reader skipped {len(skipped)} row(s) (first: {skipped.iloc[0]['id']}: {skipped.iloc[0]['reason']})", file=sys.stderr)
    config = {"command": "embed", **{k: v for k, v in vars(args).items() if k != "func"}}
    engine = "ranks" if ranks is not None else args.engine
    rank, world, local = ranks or (None, None, None)
    res = embed(
        table, EncoderSpec(args.model, args.device, args.precision), args.out, engine=engine, batch_size=args.batch_size,
        num_workers=args.num_workers, shard_size=args.shard_size, tta=args.tta, progress=not args.no_progress,
        config=config, skipped=skipped, rank=rank, world_size=world, local_rank=local,
        ray_address=args.ray_address, ray_actors=args.ray_actors,
    )
    prefix = f"rank {rank}/{world}: " if ranks is not None else ""
    print(
        f"{prefix}embedded {res.rows_embedded} image(s) in {res.seconds:.1f}s ({res.images_per_s:.1f} img/s), "
        f"{res.failures} failure(s); store {res.store.path} now holds {len(res.store)} rows"
    )
    return 0
