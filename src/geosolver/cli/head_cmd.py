"""``geosolver head train``: a location head (geocells or a flow on the sphere) from a store's
embeddings and coordinates. The options are derived from :class:`geosolver.heads.HeadConfig`."""

from __future__ import annotations

import argparse
import dataclasses

from geosolver.cli import summary
from geosolver.cli.args import add_config_arguments
from geosolver.heads.config import HeadConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("head", help=summary("head"),
                       description="Location heads learned on stored embeddings; fuse them with the kNN vote through "
                       "`locate --head DIR --fuse` and `evaluate --head DIR --fuse none,head`.")
    hs = p.add_subparsers(dest="head_command", metavar="SUBCOMMAND", required=True)
    t = hs.add_parser("train", help="train a head from a gallery store (resumable: rerun the same command)",
                      description="Train a location head on a store's embeddings and lat/lon (images are never read). "
                      "Writes OUT/head.json, model.pt (best validation step), cells.npz (cells), state.pt, config.json. "
                      "Killed? Rerun the same command: it resumes and ends with the same weights.")
    add_config_arguments(t, HeadConfig)
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from geosolver.heads.train import train_head  # torch: loaded only when a head is trained

    cfg = HeadConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(HeadConfig)})
    res = train_head(cfg)
    resumed = f", resumed from step {res.resumed_from}" if res.resumed_from else ""
    rate = f", {res.rate:.0f} embeddings/s" if res.rate else ""
    print(f"trained a {res.kind} head: {res.steps} steps on {res.n_train} embeddings in {res.seconds:.0f}s{resumed}{rate}")
    print(f"  best validation step {res.best_step}: mean Geoscore {res.best_val_geoscore:.0f} on {res.n_val} held-out rows")
    print(f"head: {res.out}")
    return 0
