"""The fine-tuning loop: ``train(TrainConfig) -> TrainResult``, in named stages.

One run, read top to bottom in :func:`train`:

0. :func:`~geosolver.train.checkpoint.check_out` — before any work: a new ``--out``, this run's
   own folder (resumed from ``checkpoint.pt`` if there is one), or one line refusing it;
1. :func:`setup` — ``accelerate`` (devices, ranks, mixed precision), the seed;
2. :func:`read_data` — the dataset table, validation queries held out, a validation gallery
   picked among the training rows;
3. :func:`load_model` + :func:`prepare_inputs` — the encoder, decoded pixels (or the RAM cache),
   the frozen-trunk cache with ``--cache-trunk``;
4. :func:`base_targets` — what the **frozen base model** says (embedded once): the target curve
   μ(d) (distance-consistency) and every training image's embedding (distillation);
5. :func:`~geosolver.train.params.choose_trainable` — model surgery: freeze / unfreeze / add
   LoRA (``train`` mode), gradient checkpointing;
6. :func:`make_optimiser` — AdamW with warm-up + cosine decay;
7. :meth:`Trainer.fit` — batches from :class:`~geosolver.train.sampler.CellGroupBatchSampler`
   (groups of images from one grid cell, so near pairs exist), random horizontal flips, bf16
   autocast on GPU (:meth:`Trainer.train_step`); every ``eval_every`` steps (and at step 0)
   :meth:`Trainer.evaluate`: validation Geoscore, Spearman, mean cosine, effective rank; the best
   weights (by Geoscore) are kept; training **stops** when the space collapses; every
   ``save_every`` steps ``OUT/checkpoint.pt`` (:mod:`geosolver.train.checkpoint`: a resumed run
   goes on from there with the same batches, flips and optimiser state);
8. :func:`save_model` + :func:`write_outputs` — ``OUT/model`` (best weights; LoRA merged; loadable
   by ``transformers.CLIPModel.from_pretrained`` and ``load_encoder``), ``train_log.jsonl``,
   ``config.json``, ``target_curve.json``, ``training.png`` (:mod:`geosolver.train.plots`; all
   through :class:`~geosolver.rundir.RunDir`); then :class:`~geosolver.errors.CollapseError` if
   the run collapsed.

Runs in one process on CPU or GPU; under ``accelerate launch`` each process takes its share of
the batches and DDP averages the gradients.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from geosolver.embed.decode import default_num_workers
from geosolver.encoders import Encoder
from geosolver.errors import CollapseError, TrainError
from geosolver.files import jsonable
from geosolver.geo import grid_cell, validate_coords
from geosolver.rundir import RunDir
from geosolver.train.checkpoint import CHECKPOINT, check_out, read_checkpoint, resume, save_checkpoint
from geosolver.train.config import ObjectiveWeights, TrainConfig
from geosolver.train.objectives import TargetCurve, combined_loss
from geosolver.train.params import (
    Surgery,
    check_has_weights,
    choose_trainable,
    count_parameters,
    disable_checkpointing,
    merge_lora,
    missing_train_extra,
    restore,
    snapshot,
)
from geosolver.analysis.curve import fit_monotone_curve
from geosolver.analysis.pairs import all_pairs_stats
from geosolver.data import read_dataset
from geosolver.encoders import load_encoder
from geosolver.progress import tqdm
from geosolver.train.pixels import Pixels, TrainInputs, TrunkCache
from geosolver.train.plots import plot_training
from geosolver.train.sampler import CellGroupBatchSampler, SamplerPosition
from geosolver.train.trunk import split_model
from geosolver.train.validate import ValidationSet, collapse_reason

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out: output directory; model_dir: ``OUT/model``.
        steps: optimiser steps done; best_step: step of the saved weights (0 = the base model).
        initial_metrics, best_metrics, final_metrics: validation numbers (empty without validation).
        seconds: wall time (a resumed run: with the time spent before its checkpoint).
        encoder: the trained encoder in memory (best weights, LoRA merged).
        resumed_at: the checkpoint's step this run went on from (0: started from the base model).
    """

    out: Path
    model_dir: Path
    steps: int
    best_step: int
    initial_metrics: dict
    best_metrics: dict
    final_metrics: dict
    seconds: float
    encoder: Encoder | None = field(default=None, repr=False)
    resumed_at: int = 0


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def train(config: TrainConfig, table: pd.DataFrame | None = None, encoder: Encoder | None = None) -> TrainResult:
    """Fine-tune an encoder with the configured objectives (see the module docstring).

    Args:
        config: the run's settings.
        table: optional dataset table (``id, source, lat, lon, ...``) instead of reading
            ``config.root``.
        encoder: optional already loaded :class:`~geosolver.encoders.Encoder` (trained in place)
            instead of loading ``config.model``.

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainError: bad settings or data, or the ``[train]`` extra is not installed.
        CollapseError: the embedding space collapsed; the outputs (with the best weights so far)
            are written before it is raised.
    """
    t0 = time.time()
    cfg = config
    cfg.check()
    weights = cfg.weights()
    resume_from = check_out(cfg)  # before any work: refuse a folder that is not this run's
    run = RunDir(cfg.out, "train", overwrite=cfg.overwrite or None)
    rt = setup(cfg)
    if rt.main:
        run.write_config(asdict(cfg))  # claims the folder at once: a re-run after a kill resumes here
    state = read_checkpoint(resume_from, cfg) if resume_from is not None else None
    data, rows = read_data(cfg, table)
    enc = load_model(cfg, encoder, rt)
    check_has_weights(enc)  # before any image is embedded
    inputs, rows = prepare_inputs(cfg, enc, data, rows, rt)
    targets, rows = base_targets(cfg, weights, inputs, data, rows)
    if rt.main and targets.curve is not None:
        run.write_json("target_curve.json", curve_record(cfg, targets.curve, len(rows.train)))
    surgery = choose_trainable(cfg, enc)
    opt, sched = make_optimiser(cfg, surgery.params)
    module, opt = rt.accelerator.prepare(inputs.module(), opt)
    effective = effective_config(cfg, weights, rt, enc, rows)
    if rt.main:
        run.write_config(effective)
    with TrainLog(run / TRAIN_LOG if rt.main else None, keep_bytes=state["log_bytes"] if state else None) as train_log:
        trainer = Trainer(
            cfg=cfg, weights=weights, rt=rt, inputs=inputs, targets=targets, surgery=surgery,
            module=module, opt=opt, sched=sched, validator=Validator.build(cfg, data, rows, inputs),
            train_log=train_log, history=History(best_state=snapshot(surgery.params)),
            lat=torch.tensor(data.lat), lon=torch.tensor(data.lon), t0=t0,
            flip_gen=torch.Generator().manual_seed(cfg.seed + 2 + rt.rank),
            train_rows=len(rows.train), checkpoint=run / CHECKPOINT if cfg.save_every else None,
        )
        if state is not None:
            resume(trainer, state, resume_from)
            log.info("resuming %s at step %d of %d", cfg.out, trainer.step, cfg.steps)
        resumed_at = trainer.step
        trainer.fit(inputs.batches(make_sampler(cfg, data, rows), rows.train, rt.rank, rt.world, trainer.position))
    model_dir = save_model(trainer, run)
    h = trainer.history
    if rt.main:
        write_outputs(run, effective, trainer, time.time() - trainer.t0)
    result = TrainResult(run.path, model_dir, trainer.step, h.best_step, h.initial, h.best, h.last, time.time() - trainer.t0, enc, resumed_at)
    if h.collapsed is not None:
        raise CollapseError(
            f"training stopped at step {trainer.step}: the embedding space collapsed ({h.collapsed}); "
            f"the best weights before that (step {h.best_step}) are in {model_dir}. "
            "Lower the learning rate, or add --w-uniformity / --w-distill.",
            result=result,
        )
    return result


# ----------------------------------------------------------------------------------------------
# 1. setup: devices, ranks, precision, seed
# ----------------------------------------------------------------------------------------------
@dataclass
class Runtime:
    """Where this process runs.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` (device, rank, DDP, autocast).
        cpu: training on the CPU.
        mixed: ``"bf16"`` (autocast on GPU) or ``"no"``.
    """

    accelerator: Any
    cpu: bool
    mixed: str

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


def setup(cfg: TrainConfig) -> Runtime:
    """The ``accelerate`` state for ``cfg.device`` / ``cfg.precision``; seeds torch with ``cfg.seed``.

    Raises:
        TrainError: ``accelerate`` is not installed (the ``[train]`` extra).
    """
    try:
        from accelerate import Accelerator  # accelerate: the optional [train] extra
        from accelerate.utils import DistributedDataParallelKwargs  # accelerate: the optional [train] extra
    except ImportError as e:
        raise missing_train_extra(e) from None
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    mixed = "bf16" if (not cpu and cfg.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()) else "no"
    # find_unused_parameters: heads such as EfficientNet's unused classifier get no gradient.
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    torch.manual_seed(cfg.seed)
    return Runtime(accelerator, cpu, mixed)


# ----------------------------------------------------------------------------------------------
# 2. data: the table and its split
# ----------------------------------------------------------------------------------------------
@dataclass
class Data:
    """The dataset table (``id, source, lat, lon, ...``, index ``0..n-1``) and its ``(n,)`` coordinates, degrees."""

    table: pd.DataFrame
    lat: np.ndarray
    lon: np.ndarray


@dataclass
class Rows:
    """Table row numbers: training rows, validation queries, validation gallery (⊂ training rows)."""

    train: np.ndarray
    val_q: np.ndarray
    val_g: np.ndarray

    def keep(self, ok: np.ndarray) -> Rows:
        """Only the rows whose ``ok[row]`` is set (``ok``: a mask over the table's rows)."""
        return Rows(self.train[ok[self.train]], self.val_q[ok[self.val_q]], self.val_g[ok[self.val_g]])


def read_data(cfg: TrainConfig, table: pd.DataFrame | None) -> tuple[Data, Rows]:
    """The table (``table``, else read from ``cfg.root``) and its split (:func:`split_rows`)."""
    if table is None:
        if not cfg.root:
            raise TrainError("no dataset: give --root (and --csv / --dataset)")

        table = read_dataset(cfg.dataset, cfg.root, split=cfg.split, csv=cfg.csv, limit=cfg.limit)
    table = table.reset_index(drop=True)
    lat, lon = validate_coords(table["lat"].to_numpy(), table["lon"].to_numpy(), "dataset coordinates")
    if len(table) < max(4, cfg.batch_size):
        raise TrainError(f"dataset has {len(table)} usable rows; need at least max(4, batch_size={cfg.batch_size})")
    return Data(table, lat, lon), split_rows(len(table), cfg)


def split_rows(n: int, cfg: TrainConfig) -> Rows:
    """Hold out ``min(val_queries, val_fraction·n)`` random rows as validation queries; pick
    ``val_gallery`` of the rest as the validation gallery (seeded by ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_val = min(cfg.val_queries, int(round(cfg.val_fraction * n)))
    val_q, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    gal = np.sort(rng.choice(train_rows, size=min(cfg.val_gallery, len(train_rows)), replace=False))
    return Rows(train_rows, val_q, gal)


# ----------------------------------------------------------------------------------------------
# 3. the encoder and its inputs
# ----------------------------------------------------------------------------------------------
def load_model(cfg: TrainConfig, encoder: Encoder | None, rt: Runtime) -> Encoder:
    """``encoder``, else ``cfg.model`` loaded on the run's device; float32 unless autocasting."""
    if encoder is None:
        encoder = load_encoder(cfg.model, device=rt.device, precision="fp32" if rt.cpu else cfg.precision)
    if encoder.dtype != torch.float32 and rt.mixed == "no":
        encoder.dtype = torch.float32
    return encoder


def prepare_inputs(cfg: TrainConfig, enc: Encoder, data: Data, rows: Rows, rt: Runtime) -> tuple[TrainInputs, Rows]:
    """Pixels of the table's images (decoded by workers, or cached with ``cache_images``) and,
    with ``cache_trunk``, the frozen trunk's outputs; returns them with the rows whose images decoded."""
    num_workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers("cpu" if rt.cpu else "cuda", training=True)
    progress = cfg.progress and rt.main
    pixels = Pixels(data.table["source"].astype(str).to_numpy(), enc.preprocessor, enc.min_side, num_workers, progress)
    eval_bs = max(cfg.batch_size, 32)
    if cfg.cache_images:
        pixels.build_cache(eval_bs)
        if not pixels.ok.all():
            log.warning("%d image(s) could not be decoded and are left out", int((~pixels.ok).sum()))
            rows = rows.keep(pixels.ok)
    if len(rows.train) < cfg.batch_size:
        raise TrainError(f"only {len(rows.train)} training rows for batch_size {cfg.batch_size}")
    if not cfg.cache_trunk:
        return TrainInputs(enc, pixels, eval_bs), rows

    trunk_fn, head = split_model(enc.model, cfg.train, cfg.blocks)
    needed = np.union1d(np.union1d(rows.train, rows.val_q), rows.val_g)
    trunk = TrunkCache(enc, trunk_fn, pixels, needed, rows.train if cfg.flip else None, len(data.table), eval_bs, progress)
    pixels.cache = None  # the decoded pixels are no longer needed
    return TrainInputs(enc, pixels, eval_bs, trunk, head), rows.keep(trunk.ok)


# ----------------------------------------------------------------------------------------------
# 4. what the base model says: target curve, distillation targets
# ----------------------------------------------------------------------------------------------
@dataclass
class Targets:
    """What the loss compares a batch with, indexed by table row.

    Attributes:
        curve: the target similarity μ(d) (distance-consistency), or None.
        base: ``(n, dim)`` float32 base-model embeddings of the training rows (distillation;
            zeros elsewhere), or None.
        cells: ``(n,)`` grid-cell ids (same-cell contrastive positives), or None.
    """

    curve: TargetCurve | None
    base: torch.Tensor | None
    cells: torch.Tensor | None


def base_targets(cfg: TrainConfig, weights: ObjectiveWeights, inputs: TrainInputs, data: Data, rows: Rows) -> tuple[Targets, Rows]:
    """Embed with the frozen base model what the active objectives need; training rows whose image
    failed to embed are dropped."""
    rng = np.random.default_rng(cfg.seed + 1)
    base = None
    if weights.distill:
        e, ok = inputs.embed(rows.train)
        base = np.zeros((len(data.table), inputs.enc.dim), np.float32)
        base[rows.train] = e
        rows = replace(rows, train=rows.train[ok])
    curve = target_curve(cfg, inputs, data, rows.train, base, rng) if weights.consistency else None
    cells = grid_cell(data.lat, data.lon, cfg.positive_cell_deg) if cfg.positive_cell_deg else None
    return Targets(
        curve,
        torch.from_numpy(base) if base is not None else None,
        torch.tensor(cells) if cells is not None else None,
    ), rows


def target_curve(cfg: TrainConfig, inputs: TrainInputs, data: Data, train_rows: np.ndarray, base: np.ndarray | None, rng: np.random.Generator) -> TargetCurve:
    """``cfg.target_curve`` read from its JSON file, else μ(d) fitted to the base model's
    embeddings of ``curve_sample`` random training rows (:func:`fit_target_curve`)."""
    if cfg.target_curve:
        try:
            return TargetCurve.from_dict(json.loads(Path(cfg.target_curve).read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise TrainError(f"cannot read target curve {cfg.target_curve}: {e}") from None
    ref = np.sort(rng.choice(train_rows, size=min(cfg.curve_sample, len(train_rows)), replace=False))
    if base is not None:
        e, ok = base[ref], np.ones(len(ref), bool)
    else:
        e, ok = inputs.embed(ref)
    return fit_target_curve(e[ok], data.lat[ref][ok], data.lon[ref][ok], cfg.sharpen)


def fit_target_curve(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, sharpen: float = 1.0) -> TargetCurve:
    """Fit μ(d) to base-model embeddings: binned mean similarity of all pairs vs distance
    (``geosolver.analysis``), isotonic non-increasing fit, then :func:`sharpen_values`.

    Args:
        emb: ``(n, d)`` L2-normalised embeddings of a reference sample.
        lat, lon: ``(n,)`` degrees.
    """
    st = all_pairs_stats([emb], lat, lon, progress=False)[0]
    b = st.binned()
    return TargetCurve.from_monotone(fit_monotone_curve(st.bin_centers_km, b["mean"], b["count"]), sharpen)


def curve_record(cfg: TrainConfig, curve: TargetCurve, n_train: int) -> dict:
    """``target_curve.json``: the curve, how many images it was fitted on, its source file."""
    fitted_on = None if cfg.target_curve else int(min(cfg.curve_sample, n_train))
    return {**curve.to_dict(), "fitted_on": fitted_on, "source": cfg.target_curve}


# ----------------------------------------------------------------------------------------------
# 6. optimiser and schedule
# ----------------------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate at ``step``: linear warm-up over ``warmup`` steps,
    then cosine decay to 0.1 at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def make_optimiser(cfg: TrainConfig, params: dict[str, torch.nn.Parameter]) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW at :meth:`TrainConfig.learning_rate` (weight decay on matrices only) and its schedule (:func:`lr_factor`)."""
    decay = [p for p in params.values() if p.ndim >= 2]
    no_decay = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, warmup=cfg.warmup_steps, total=cfg.steps))
    return opt, sched


def make_sampler(cfg: TrainConfig, data: Data, rows: Rows) -> CellGroupBatchSampler:
    """Batches of same-cell groups over the training rows (positions into ``rows.train``)."""
    return CellGroupBatchSampler(
        data.lat[rows.train], data.lon[rows.train], cfg.batch_size, cfg.group_size, cfg.cell_deg,
        batches_per_epoch=max(1, len(rows.train) // cfg.batch_size), seed=cfg.seed,
    )


# ----------------------------------------------------------------------------------------------
# validation, history, log
# ----------------------------------------------------------------------------------------------
@dataclass
class Validator:
    """Validation numbers of the current model: held-out queries against the gallery."""

    cfg: TrainConfig
    data: Data
    rows: Rows
    inputs: TrainInputs
    vset: ValidationSet

    @classmethod
    def build(cls, cfg: TrainConfig, data: Data, rows: Rows, inputs: TrainInputs) -> Validator | None:
        """None without validation queries or with fewer than 2 gallery rows."""
        if not (len(rows.val_q) and len(rows.val_g) >= 2):
            return None
        q, g = rows.val_q, rows.val_g
        return cls(cfg, data, rows, inputs, ValidationSet.build(data.lat[q], data.lon[q], data.lat[g], data.lon[g], seed=cfg.seed))

    def metrics(self) -> dict:
        """:meth:`ValidationSet.metrics` of freshly embedded queries and gallery; images that fail
        to embed are left out of the validation set."""
        q_rows, g_rows, lat, lon = self.rows.val_q, self.rows.val_g, self.data.lat, self.data.lon
        g, gok = self.inputs.embed(g_rows)
        q, qok = self.inputs.embed(q_rows)
        if not (gok.all() and qok.all()):
            q_rows, g_rows = q_rows[qok], g_rows[gok]
            self.vset = ValidationSet.build(lat[q_rows], lon[q_rows], lat[g_rows], lon[g_rows], seed=self.cfg.seed)
        return self.vset.metrics(q[qok], g[gok], self.cfg.k, self.cfg.strategy)


@dataclass
class History:
    """Validation so far: the first, best (by Geoscore) and last metrics, the best weights, why the
    space collapsed (None while it has not)."""

    best_state: dict[str, torch.Tensor]
    best_step: int = 0
    initial: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)
    collapsed: str | None = None

    def is_best(self, m: dict) -> bool:
        return not self.best or m.get("geoscore", -1) > self.best.get("geoscore", -1)


class TrainLog:
    """``train_log.jsonl``: one JSON record per line (``type`` ``step`` or ``eval``), flushed as
    written; ``path`` None (processes other than the main one) writes nothing.

    ``keep_bytes``: a resumed run keeps the log's first ``keep_bytes`` bytes (the records up to its
    checkpoint; :meth:`tell` gave the number) and appends after them.
    """

    def __init__(self, path: Path | None, keep_bytes: int | None = None):
        self.f = None
        if path is None:
            return
        if keep_bytes is None or not path.is_file():
            self.f = open(path, "wb")
            return
        if path.stat().st_size < keep_bytes:
            log.warning("%s is shorter than at the checkpoint; its later records are lost", path)
        self.f = open(path, "r+b")
        self.f.truncate(min(keep_bytes, path.stat().st_size))
        self.f.seek(0, os.SEEK_END)

    def write(self, rec: dict) -> None:
        if self.f is not None:
            self.f.write((json.dumps(jsonable(rec)) + "\n").encode())
            self.f.flush()

    def tell(self) -> int:
        """Bytes written so far (0 for processes that write nothing)."""
        return self.f.tell() if self.f is not None else 0

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc) -> None:
        if self.f is not None:
            self.f.close()


# ----------------------------------------------------------------------------------------------
# 7. the loop
# ----------------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """The pieces of a run, built by the stages above, and the loop over them.

    ``module`` is what gradients flow through (the encoder's features or the head; DDP-wrapped
    under ``accelerate launch``); ``lat``/``lon`` ``(n,)`` degrees of every table row;
    ``train_rows`` how many there are to train on; ``checkpoint`` where :meth:`fit` saves every
    ``cfg.save_every`` steps (None: nowhere); ``position`` the sampler position of the batches taken.
    """

    cfg: TrainConfig
    weights: ObjectiveWeights
    rt: Runtime
    inputs: TrainInputs
    targets: Targets
    surgery: Surgery
    module: torch.nn.Module
    opt: Any
    sched: torch.optim.lr_scheduler.LambdaLR
    validator: Validator | None
    train_log: TrainLog
    history: History
    lat: torch.Tensor
    lon: torch.Tensor
    flip_gen: torch.Generator
    t0: float
    train_rows: int
    checkpoint: Path | None = None
    step: int = 0
    position: SamplerPosition = field(default_factory=SamplerPosition)

    def fit(self, batches) -> None:
        """Validate at step 0, take the steps up to ``cfg.steps`` (validating every ``eval_every``,
        saving a checkpoint every ``save_every`` and at the last step), validate at the end; stops
        early when the space collapses. A resumed trainer goes on from :attr:`step`."""
        cfg = self.cfg
        if self.step == 0:
            self.evaluate()
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.train}", unit="step",
                   disable=not (cfg.progress and self.rt.main))
        # The model stays in eval mode while training: frozen BatchNorm statistics, no dropout or
        # stochastic depth — small same-cell batches would corrupt BN statistics, and the function
        # trained is then exactly the one that embeds.
        self.module.eval()
        try:
            while self.step < cfg.steps and self.history.collapsed is None:
                loss = self.train_step(*next(batches))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate()
                if self.checkpoint is not None and (self.step % cfg.save_every == 0 or self.step == cfg.steps):
                    save_checkpoint(self, self.checkpoint)
            if self.history.collapsed is None and self.history.last.get("step") != self.step:
                self.evaluate()
        finally:
            bar.close()

    def train_step(self, rows: np.ndarray, pixels: torch.Tensor | None) -> float:
        """One optimiser step on a batch (``rows`` of the table, their pixels or None with the trunk
        cache); logs and returns the loss."""
        cfg, acc, dev = self.cfg, self.rt.accelerator, self.rt.device
        flip = torch.rand(len(rows), generator=self.flip_gen) < 0.5 if cfg.flip else None
        x = self.inputs.forward_input(rows, pixels, flip)
        idx = torch.from_numpy(rows)
        for m in self.surgery.ckpt_layers:
            m.training = True  # this module only, not its children (dropout stays off)
        with acc.autocast():
            feats = self.module(x.to(dev, non_blocking=True))
        t = self.targets
        loss, parts = combined_loss(
            feats, self.lat[idx].to(dev), self.lon[idx].to(dev), self.weights,
            radius_km=cfg.radius_km, temperature=cfg.temperature,
            cell=t.cells[idx].to(dev) if t.cells is not None else None,
            target=t.curve, balance_edges_km=cfg.balance_edges_km,
            base=t.base[idx].to(dev) if t.base is not None else None,
            soft_scale_km=cfg.soft_scale_km, consistency_max_km=cfg.consistency_max_km,
        )
        if not torch.isfinite(loss):
            raise TrainError(f"loss became {float(loss)} at step {self.step + 1}; lower the learning rate (now {cfg.learning_rate():g})")
        self.opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        if cfg.grad_clip:
            acc.clip_grad_norm_(list(self.surgery.params.values()), cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.step += 1
        value = float(loss.detach())
        self.train_log.write({
            "type": "step", "step": self.step, "loss": value, "parts": parts, "lr": self.sched.get_last_lr()[0],
            "batch": int(len(rows)), "seconds": round(time.time() - self.t0, 3),
        })
        return value

    def evaluate(self) -> None:
        """Validate the current weights; keep them if they are the best so far, note a collapse."""
        if self.validator is None:
            return
        h, cfg = self.history, self.cfg
        m = self.validator.metrics()
        m["step"] = self.step
        h.last = m
        if not h.initial:
            h.initial = dict(m)
        why = collapse_reason(m, h.initial, cfg.collapse_rank_frac, cfg.collapse_max_cosine)
        self.train_log.write({"type": "eval", **m, "collapsed": why})
        log.info("step %d: val geoscore %.1f, spearman %.3f, mean cos %.3f, eff. rank %.2f",
                 self.step, m.get("geoscore", float("nan")), m["spearman"], m["mean_cosine"], m["effective_rank"])
        if why:
            h.collapsed = why
        elif h.is_best(m):
            h.best, h.best_step, h.best_state = dict(m), self.step, snapshot(self.surgery.params)


# ----------------------------------------------------------------------------------------------
# 8. outputs
# ----------------------------------------------------------------------------------------------
def effective_config(cfg: TrainConfig, weights: ObjectiveWeights, rt: Runtime, enc: Encoder, rows: Rows) -> dict:
    """``config.json``'s settings: the config plus what was derived from it at run time."""
    n_trainable, n_total = count_parameters(enc.model)
    return {
        **asdict(cfg),
        "weights": asdict(weights),
        "lr_effective": cfg.learning_rate(),
        "device_used": str(rt.device),
        "mixed_precision": rt.mixed,
        "num_processes": rt.world,
        "encoder": enc.identity(),
        "rows": {"train": int(len(rows.train)), "val_queries": int(len(rows.val_q)), "val_gallery": int(len(rows.val_g))},
        "parameters": {"trainable": n_trainable, "total": n_total},
    }


def save_model(trainer: Trainer, run: RunDir) -> Path:
    """Put the best weights back (the final ones without validation), merge LoRA, freeze, and
    write ``OUT/model`` (main process); returns its path."""
    cfg, enc, surgery, h = trainer.cfg, trainer.inputs.enc, trainer.surgery, trainer.history
    trainer.module.eval()
    if trainer.validator is None:
        h.best_step, h.best_state = trainer.step, snapshot(surgery.params)
    restore(surgery.params, h.best_state)
    if surgery.peft_model is not None:
        enc.model = merge_lora(surgery.peft_model)
    enc.model.requires_grad_(False)
    enc.model.eval()
    if cfg.gradient_checkpointing:
        disable_checkpointing(enc.model)
    model_dir = run / "model"
    trainer.rt.accelerator.wait_for_everyone()
    if trainer.rt.main:
        enc.save(model_dir)
    return model_dir


def write_outputs(run: RunDir, effective: dict, trainer: Trainer, seconds: float) -> None:
    """``training.png`` and the final ``config.json`` (the settings plus ``result``)."""
    try:
        plot_training(run / TRAIN_LOG, run / "training.png", weights=effective.get("weights"))
    except Exception as e:  # noqa: BLE001 — a plot must not lose a finished run
        log.warning("could not draw training.png: %s", e)
    h = trainer.history
    result = {
        "steps_done": trainer.step, "best_step": h.best_step, "initial_metrics": h.initial, "best_metrics": h.best,
        "final_metrics": h.last, "collapsed": h.collapsed, "seconds": round(seconds, 2),
    }
    run.write_config(effective, result=result)
