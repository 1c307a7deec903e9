"""``geosolver study``: the founding study on OSV5M (logic in :mod:`geosolver.study`)."""

from __future__ import annotations

import argparse

from geosolver.cli import summary
from geosolver.cli.args import add_overwrite_option, non_negative_int, positive_float, positive_int


def _sizes(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"gallery sizes must be >= 1, got {s!r}")
    return v


def register(sub) -> None:
    from geosolver.encoders import DEFAULT_ENCODER, PRECISIONS
    from geosolver.train.config import DEFAULT_LR, TRAIN_MODES, TrainModeAction

    p = sub.add_parser(
        "study", help=summary("study"),
        description="Embed OSV5M test + a train slice with two encoders, analyse them, tabulate group sizes, "
        "evaluate kNN geolocation, compare curated vs random galleries, fine-tune the model (soft-target contrastive, "
        "sharpened and plain distance-consistency) and write OUT/report.html, report.md and summary.json. The root "
        "(both splits), both encoders and every option are checked first, in seconds, before anything is written; "
        "then an estimate of the time and disk still needed is printed. Each step is skipped when its output exists, "
        "so a killed study resumes.",
    )
    p.add_argument("--root", required=True, help="OSV5M root (see `geosolver download osv5m`)")
    p.add_argument("--out", required=True, help="study directory")
    add_overwrite_option(p)
    p.add_argument("--model", default=DEFAULT_ENCODER, help=f"the encoder studied and fine-tuned (default {DEFAULT_ENCODER})")
    p.add_argument("--baseline", default="clip-vit-l-14-336", help="the encoder it is compared with (default clip-vit-l-14-336)")
    p.add_argument("--test-limit", type=positive_int, default=None, help="first N test images (default: all)")
    p.add_argument("--train-limit", type=positive_int, default=100_000, help="train slice: first N images (default 100000)")
    p.add_argument("--gallery-sizes", type=_sizes, default=[10_000, 50_000], help="curated gallery sizes (default 10000,50000)")
    p.add_argument("--steps", type=positive_int, default=500, help="fine-tuning steps per arm (default 500)")
    p.add_argument("--train", nargs="+", metavar=("MODE", "N"), action=TrainModeAction, default="last-blocks",
                   help=f"what is fine-tuned: {' | '.join(m + ' N' if m == 'last-blocks' else m for m in TRAIN_MODES)} "
                   "(default last-blocks 2)")
    p.add_argument("--blocks", type=positive_int, default=2, help="N of --train last-blocks N (default 2)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="peak learning rate (default by mode: " + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="inference precision (training: bf16 or fp32)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per embedding batch")
    p.add_argument("--train-batch-size", type=positive_int, default=64, help="images per training step")
    p.add_argument("--num-workers", type=non_negative_int, default=None, help="image decoding workers (default: by device)")
    p.add_argument("--analysis-sample", type=positive_int, default=3000, help="images in the similarity-vs-distance analysis")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geosolver.study import StudyConfig, run_study

    cfg = StudyConfig(root=args.root, out=args.out, model=args.model, baseline=args.baseline, test_limit=args.test_limit,
                      train_limit=args.train_limit, gallery_sizes=args.gallery_sizes, steps=args.steps, train=args.train,
                      blocks=args.blocks, lr=args.lr, device=args.device,
                      precision=args.precision, batch_size=args.batch_size, train_batch_size=args.train_batch_size,
                      num_workers=args.num_workers, analysis_sample=args.analysis_sample, seed=args.seed,
                      progress=not args.no_progress)
    run_study(cfg)
    return 0
