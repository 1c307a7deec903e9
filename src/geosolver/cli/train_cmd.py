"""`geosolver train`: fine-tune an encoder with distance-aware objectives."""

from __future__ import annotations

import argparse

from geosolver.cli import UserError
from geosolver.data import add_dataset_arguments


def _train_mode(values: list[str]) -> tuple[str, int | None]:
    from geosolver.train import TRAIN_MODES

    mode = values[0]
    if mode not in TRAIN_MODES:
        raise UserError(f"--train: unknown mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
    if len(values) > 2 or (len(values) == 2 and mode != "last-blocks"):
        raise UserError(f"--train: only 'last-blocks N' takes a number; got {' '.join(values)}")
    if len(values) == 2:
        try:
            return mode, int(values[1])
        except ValueError:
            raise UserError(f"--train last-blocks N: N must be an integer, got {values[1]!r}") from None
    return mode, None


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune an encoder so similarity falls with distance (geo-contrastive / distance-consistency)",
        description="Fine-tune an image encoder for retrieval geolocation. Writes OUT/model (plain "
        "transformers.CLIPModel.from_pretrained loads it), train_log.jsonl, config.json, "
        "target_curve.json and training.png.",
    )
    add_dataset_arguments(p)

    o = p.add_argument_group("objectives")
    o.add_argument("--objective", choices=["geo-contrastive", "distance-consistency", "both"], default="distance-consistency",
                   help="preset for --w-contrastive / --w-consistency (default: distance-consistency)")
    o.add_argument("--w-contrastive", type=float, default=None, help="weight of the geo-contrastive InfoNCE term")
    o.add_argument("--w-consistency", type=float, default=None, help="weight of the distance-consistency term")
    o.add_argument("--w-uniformity", type=float, default=0.0, help="weight of the uniformity (anti-collapse) term (default 0)")
    o.add_argument("--w-distill", type=float, default=0.1, help="weight of the distillation-to-base term (default 0.1)")
    o.add_argument("--radius-km", type=float, default=25.0, help="contrastive positives: pairs closer than this (default 25 km)")
    o.add_argument("--positive-cell-deg", type=float, default=None, help="also count pairs in the same cell of this size (degrees) as positives")
    o.add_argument("--temperature", type=float, default=0.07, help="InfoNCE temperature (default 0.07)")
    o.add_argument("--sharpen", type=float, default=1.0, help="stretch the target curve: mu' = mu_far + (mu - mu_far) * s, <= 1 (default 1)")
    o.add_argument("--target-curve", default=None, help="JSON curve (knots_km, sim) to use instead of fitting one, e.g. another run's target_curve.json")
    o.add_argument("--curve-sample", type=int, default=2000, help="images embedded by the base model to fit the target curve (default 2000)")

    m = p.add_argument_group("model")
    m.add_argument("--model", default="streetclip", help="encoder name, hub id or local directory (default: streetclip)")
    m.add_argument("--train", nargs="+", default=["last-blocks", "2"], metavar="MODE",
                   help="projection | last-blocks N | lora | all (default: last-blocks 2)")
    m.add_argument("--lora-r", type=int, default=8)
    m.add_argument("--lora-alpha", type=float, default=16.0)
    m.add_argument("--gradient-checkpointing", action="store_true")

    t = p.add_argument_group("optimisation")
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=64, help="images per step and process (default 64)")
    t.add_argument("--group-size", type=int, default=4, help="images per same-cell group in a batch (default 4)")
    t.add_argument("--cell-deg", type=float, default=2.0, help="cell size of the groups, degrees (default 2)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default by mode: projection 1e-3, last-blocks 2e-5, lora 1e-4, all 1e-5)")
    t.add_argument("--weight-decay", type=float, default=0.01)
    t.add_argument("--warmup-steps", type=int, default=20)
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-flip", action="store_true", help="no random horizontal flips")

    v = p.add_argument_group("validation")
    v.add_argument("--eval-every", type=int, default=100, help="steps between validations (0: start and end only)")
    v.add_argument("--val-fraction", type=float, default=0.1, help="share of rows held out as validation queries (default 0.1)")
    v.add_argument("--val-queries", type=int, default=500, help="at most this many validation queries")
    v.add_argument("--val-gallery", type=int, default=2000, help="training rows used as the validation gallery")
    v.add_argument("--k", type=int, default=10, help="neighbours that vote (default 10)")
    v.add_argument("--strategy", choices=["nn", "weighted-mean", "densest"], default="densest")
    v.add_argument("--collapse-rank-frac", type=float, default=0.5, help="stop if the effective rank falls below this share of its initial value")
    v.add_argument("--collapse-max-cosine", type=float, default=0.95, help="stop if the mean pairwise cosine rises above this")

    r = p.add_argument_group("runtime")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda")
    r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto = bf16 autocast on GPU")
    r.add_argument("--num-workers", type=int, default=None, help="image decoding workers (default: by device)")
    r.add_argument("--cache-images", action="store_true", help="decode + preprocess every image once and keep the pixels in RAM")
    r.add_argument("--cache-trunk", action="store_true",
                   help="with --train projection / last-blocks: run the frozen part once per image and train the head alone (fast on CPU)")
    r.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~geosolver.train.TrainConfig` for parsed arguments."""
    from geosolver.train import TrainConfig

    mode, blocks = _train_mode(args.train)
    return TrainConfig(
        out=args.out, root=args.root, dataset=args.dataset, split=args.split, csv=args.csv, limit=args.limit,
        model=args.model, objective=args.objective, w_contrastive=args.w_contrastive, w_consistency=args.w_consistency,
        w_uniformity=args.w_uniformity, w_distill=args.w_distill, radius_km=args.radius_km,
        positive_cell_deg=args.positive_cell_deg, temperature=args.temperature, sharpen=args.sharpen,
        target_curve=args.target_curve, curve_sample=args.curve_sample, train=mode, blocks=blocks or 2,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, gradient_checkpointing=args.gradient_checkpointing,
        steps=args.steps, batch_size=args.batch_size, group_size=args.group_size, cell_deg=args.cell_deg,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, grad_clip=args.grad_clip,
        seed=args.seed, flip=not args.no_flip, eval_every=args.eval_every, val_fraction=args.val_fraction,
        val_queries=args.val_queries, val_gallery=args.val_gallery, k=args.k, strategy=args.strategy,
        collapse_rank_frac=args.collapse_rank_frac, collapse_max_cosine=args.collapse_max_cosine,
        device=args.device, precision=args.precision, num_workers=args.num_workers,
        cache_images=args.cache_images, cache_trunk=args.cache_trunk, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from geosolver.train import train

    res = train(config_from_args(args))
    fmt = lambda m: (f"Geoscore {m['geoscore']:.1f}, median {m['median_km']:.1f} km, " if "geoscore" in m else "") + (  # noqa: E731
        f"Spearman {m['spearman']:.3f}, mean cos {m['mean_cosine']:.3f}, eff. rank {m['effective_rank']:.1f}" if m else "no validation"
    )
    print(f"trained {res.steps} step(s) in {res.seconds:.0f}s; kept step {res.best_step}")
    if res.initial_metrics:
        print(f"  base model : {fmt(res.initial_metrics)}")
        print(f"  kept model : {fmt(res.best_metrics)}")
    print(f"model: {res.model_dir}  (log: {res.out / 'train_log.jsonl'}, plot: {res.out / 'training.png'})")
    return 0
