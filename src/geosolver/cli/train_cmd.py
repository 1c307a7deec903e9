"""`geosolver train`: fine-tune an encoder with distance-aware objectives.

The options are derived from :class:`geosolver.train.config.TrainConfig` (each field's
``metadata`` holds its help and choices) by :func:`geosolver.cli.args.add_config_arguments`, so a
setting is declared once; the parsed namespace is the config's fields. ``legacy_spellings`` keeps
what ``transformers.HfArgumentParser`` accepted before (``--w_distill``, ``--flip false``), so
``train --help`` no longer imports transformers.
"""

from __future__ import annotations

import argparse

from geosolver.cli import summary
from geosolver.cli.args import add_config_arguments, config_from_args


def register(sub) -> None:
    from geosolver.train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help=summary("train"),
        description="Fine-tune an image encoder for retrieval geolocation. Writes OUT/model (plain "
        "transformers.CLIPModel.from_pretrained loads it), train_log.jsonl, config.json, "
        "target_curve.json, training.png and, every --save-every steps, checkpoint.pt: the same command "
        "run again in the same --out resumes a killed run from it.",
    )
    add_config_arguments(p, TrainConfig, legacy_spellings=True)
    p.set_defaults(func=run)


def train_config(args: argparse.Namespace):
    """The :class:`~geosolver.train.TrainConfig` of parsed ``geosolver train`` arguments."""
    from geosolver.train.config import TrainConfig

    return config_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from geosolver.train import train

    res = train(train_config(args))
    fmt = lambda m: (f"Geoscore {m['geoscore']:.1f}, median {m['median_km']:.1f} km, " if "geoscore" in m else "") + (  # noqa: E731
        f"Spearman {m['spearman']:.3f}, mean cos {m['mean_cosine']:.3f}, eff. rank {m['effective_rank']:.1f}" if m else "no validation"
    )
    resumed = f" (resumed at step {res.resumed_at})" if res.resumed_at else ""
    print(f"trained {res.steps} step(s){resumed} in {res.seconds:.0f}s; kept step {res.best_step}")
    if res.initial_metrics:
        print(f"  base model : {fmt(res.initial_metrics)}")
        print(f"  kept model : {fmt(res.best_metrics)}")
    print(f"model: {res.model_dir}  (log: {res.out / 'train_log.jsonl'}, plot: {res.out / 'training.png'})")
    return 0
