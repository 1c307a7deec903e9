"""The fine-tuning loop: ``train(TrainConfig) -> TrainResult``.

One run:

1. read the dataset, hold out validation queries, pick a validation gallery among the training rows;
2. load the encoder, embed with the **frozen base model** (once) what the objectives need: a
   reference sample to fit the target curve μ(d) (distance-consistency) and every training image
   for the distillation term;
3. freeze / unfreeze / add LoRA (``train`` mode), AdamW with warm-up + cosine decay;
4. batches from :class:`~geosolver.train.sampler.CellGroupBatchSampler` (groups of images from one
   grid cell, so near pairs exist), random horizontal flips, bf16 autocast on GPU;
5. every ``eval_every`` steps (and at step 0): validation Geoscore, Spearman, mean cosine,
   effective rank; keep the best weights (by Geoscore); **stop** with :class:`CollapseError` when
   the space collapses;
6. write ``OUT/model`` (best weights; LoRA merged; loadable by ``transformers.CLIPModel.from_pretrained``
   and ``load_encoder``), ``train_log.jsonl``, ``config.json``, ``target_curve.json``, ``training.png``.

Runs in one process on CPU or GPU; under ``accelerate launch`` each process takes its share of
the batches and DDP averages the gradients.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geosolver.geo import grid_cell, validate_coords
from geosolver.train.objectives import DEFAULT_BALANCE_EDGES_KM, ObjectiveWeights, TargetCurve, combined_loss
from geosolver.train.params import (
    TRAIN_MODES,
    TrainError,
    add_lora,
    count_parameters,
    merge_lora,
    restore,
    select_trainable,
    snapshot,
    trainable_parameters,
)
from geosolver.train.pixels import Pixels, TrunkCache, embed_rows_of, trunk_batches
from geosolver.train.sampler import CellGroupBatchSampler
from geosolver.train.validate import CollapseError, ValidationSet, collapse_reason

log = logging.getLogger(__name__)

#: ``--objective`` presets: (w_contrastive, w_consistency).
OBJECTIVE_PRESETS: dict[str, tuple[float, float]] = {
    "geo-contrastive": (1.0, 0.0),
    "distance-consistency": (0.0, 1.0),
    "both": (1.0, 1.0),
}
#: Learning rate by training mode when none is given.
DEFAULT_LR: dict[str, float] = {"projection": 1e-3, "last-blocks": 2e-5, "lora": 1e-4, "all": 1e-5}


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (written to ``OUT/config.json``).

    Attributes:
        out: output directory.
        root, dataset, split, csv, limit: the dataset (as for ``geosolver embed``).
        model: encoder name / hub id / local directory (``load_encoder``).
        objective: preset for the two main weights: ``geo-contrastive``, ``distance-consistency``,
            ``both``; ``w_contrastive`` / ``w_consistency`` override it when given.
        w_contrastive, w_consistency, w_uniformity, w_distill: loss weights (0 disables a term).
        radius_km: contrastive positives are pairs closer than this (km).
        positive_cell_deg: if set, pairs in the same cell of this size (degrees) are positives too.
        temperature: InfoNCE temperature.
        sharpen: stretch factor ``s`` of the target curve, ``μ' = μ_far + (μ − μ_far)·s`` (≤ 1).
        target_curve: a JSON file with a curve to use instead of fitting one (``knots_km``, ``sim``).
        curve_sample: training images embedded by the base model to fit μ(d).
        balance_edges_km: distance bins (km) that get equal weight in the consistency loss.
        train: ``projection``, ``last-blocks``, ``lora`` or ``all``; ``blocks``: N for last-blocks.
        lora_r, lora_alpha, lora_dropout: LoRA settings.
        steps: optimiser steps; batch_size: images per step and process;
        group_size: images per same-cell group; cell_deg: sampler cell size (degrees).
        lr: peak learning rate (default by mode, :data:`DEFAULT_LR`); weight_decay; warmup_steps;
        grad_clip: max gradient norm (0 = off).
        eval_every: steps between validations (0 = only at the start and the end).
        val_fraction, val_queries: held-out share of the rows (at most ``val_queries`` rows);
            ``val_fraction = 0``: no validation, no collapse check, the final weights are kept;
        val_gallery: training rows embedded as the validation gallery; k, strategy: kNN voting.
        collapse_rank_frac, collapse_max_cosine: collapse stop thresholds (see
            :func:`~geosolver.train.validate.collapse_reason`).
        gradient_checkpointing: trade compute for memory (transformers models).
        cache_images: decode + preprocess every image once and keep the pixels (float16) in RAM.
        cache_trunk: with ``train`` = projection / last-blocks, run the frozen trunk once per image
            (and its mirror image when ``flip``) and train + validate on the head alone
            (:mod:`geosolver.train.trunk`); by far the fastest on a CPU.
        flip: random horizontal flips.
        num_workers: DataLoader decode workers (default: by device).
        device, precision: ``auto``/``cpu``/``cuda``; ``auto``/``fp32``/``bf16`` (autocast on GPU).
        seed: seeds the split, the sampler, flips and the model's random parts.
        progress: show progress bars.
    """

    out: str
    root: str | None = None
    dataset: str = "folder"
    split: str | None = None
    csv: str | None = None
    limit: int | None = None
    model: str = "streetclip"
    objective: str = "distance-consistency"
    w_contrastive: float | None = None
    w_consistency: float | None = None
    w_uniformity: float = 0.0
    w_distill: float = 0.1
    radius_km: float = 25.0
    positive_cell_deg: float | None = None
    temperature: float = 0.07
    sharpen: float = 1.0
    target_curve: str | None = None
    curve_sample: int = 2000
    balance_edges_km: Sequence[float] = DEFAULT_BALANCE_EDGES_KM
    train: str = "last-blocks"
    blocks: int = 2
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    steps: int = 500
    batch_size: int = 64
    group_size: int = 4
    cell_deg: float = 2.0
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_every: int = 100
    val_fraction: float = 0.1
    val_queries: int = 500
    val_gallery: int = 2000
    k: int = 10
    strategy: str = "densest"
    collapse_rank_frac: float = 0.5
    collapse_max_cosine: float = 0.95
    gradient_checkpointing: bool = False
    cache_images: bool = False
    cache_trunk: bool = False
    flip: bool = True
    num_workers: int | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    progress: bool = True

    def weights(self) -> ObjectiveWeights:
        """The effective loss weights (preset, then explicit overrides)."""
        if self.objective not in OBJECTIVE_PRESETS:
            raise TrainError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVE_PRESETS)}")
        wc, wd = OBJECTIVE_PRESETS[self.objective]
        return ObjectiveWeights(
            contrastive=float(wc if self.w_contrastive is None else self.w_contrastive),
            consistency=float(wd if self.w_consistency is None else self.w_consistency),
            uniformity=float(self.w_uniformity),
            distill=float(self.w_distill),
        )

    def check(self) -> None:
        """Raise :class:`TrainError` naming the first bad setting."""
        w = self.weights()
        if not w.active():
            raise TrainError("every loss weight is 0: nothing to train")
        if any(getattr(w, n) < 0 for n in ("contrastive", "consistency", "uniformity", "distill")):
            raise TrainError(f"loss weights must be >= 0, got {w}")
        if self.train not in TRAIN_MODES:
            raise TrainError(f"unknown --train mode {self.train!r}; choose one of {', '.join(TRAIN_MODES)}")
        for name, lo in (("steps", 1), ("batch_size", 2), ("group_size", 1), ("curve_sample", 2), ("k", 1), ("val_gallery", 2)):
            if getattr(self, name) < lo:
                raise TrainError(f"{name} must be >= {lo}, got {getattr(self, name)}")
        if self.cache_trunk and self.train not in ("projection", "last-blocks"):
            raise TrainError(f"--cache-trunk works with --train projection or last-blocks, not {self.train!r}")
        if not 0 <= self.val_fraction < 1:
            raise TrainError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not (self.temperature > 0 and self.radius_km > 0 and self.sharpen > 0):
            raise TrainError("temperature, radius_km and sharpen must be > 0")
        if list(self.balance_edges_km) != sorted(set(self.balance_edges_km)) or len(self.balance_edges_km) < 2:
            raise TrainError(f"balance_edges_km must be >= 2 strictly increasing values, got {self.balance_edges_km}")


@dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        out: output directory; model_dir: ``OUT/model``.
        steps: optimiser steps done; best_step: step of the saved weights (0 = the base model).
        initial_metrics, best_metrics, final_metrics: validation numbers (empty without validation).
        seconds: wall time.
        encoder: the trained encoder in memory (best weights, LoRA merged).
    """

    out: Path
    model_dir: Path
    steps: int
    best_step: int
    initial_metrics: dict
    best_metrics: dict
    final_metrics: dict
    seconds: float
    encoder: Any = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
class _Features(torch.nn.Module):
    """``pixels → enc.features(pixels)`` as a module, so DDP sees the forward pass."""

    def __init__(self, enc):
        super().__init__()
        self.model = enc.model
        self._enc = [enc]  # a list: not registered as a submodule twice

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._enc[0].features(pixels)


def fit_target_curve(emb: np.ndarray, lat: np.ndarray, lon: np.ndarray, sharpen: float = 1.0) -> TargetCurve:
    """Fit μ(d) to base-model embeddings: binned mean similarity of all pairs vs distance
    (``geosolver.analysis``), isotonic non-increasing fit, then :func:`sharpen_values`.

    Args:
        emb: ``(n, d)`` L2-normalised embeddings of a reference sample.
        lat, lon: ``(n,)`` degrees.
    """
    from geosolver.analysis.curve import fit_monotone_curve
    from geosolver.analysis.pairs import all_pairs_stats

    st = all_pairs_stats([emb], lat, lon, progress=False)[0]
    b = st.binned()
    return TargetCurve.from_monotone(fit_monotone_curve(st.bin_centers_km, b["mean"], b["count"]), sharpen)


def _lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


def plot_training(log_path: Path, out_png: Path) -> None:
    """``training.png``: training losses (top) and validation metrics (bottom) against the step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    steps, evals = [], []
    with open(log_path) as f:
        for line in f:
            rec = json.loads(line)
            (steps if rec.get("type") == "step" else evals if rec.get("type") == "eval" else []).append(rec)
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    if steps:
        x = [r["step"] for r in steps]
        axes[0].plot(x, [r["loss"] for r in steps], label="total", color="k", lw=1)
        for name in sorted({k for r in steps for k in r.get("parts", {})}):
            axes[0].plot(x, [r["parts"].get(name, np.nan) for r in steps], label=name, lw=0.8)
        axes[0].legend(fontsize=8)
    axes[0].set_ylabel("training loss")
    if evals:
        x = [r["step"] for r in evals]
        if "geoscore" in evals[0]:
            axes[1].plot(x, [r["geoscore"] for r in evals], "o-", color="C2")
        axes[1].set_ylabel("val Geoscore")
        for key, c in (("spearman", "C0"), ("mean_cosine", "C1")):
            axes[2].plot(x, [r[key] for r in evals], "o-", color=c, label=key)
        ax2 = axes[2].twinx()
        ax2.plot(x, [r["effective_rank"] for r in evals], "s--", color="C3", label="effective rank")
        ax2.set_ylabel("effective rank")
        axes[2].legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("Spearman / mean cosine")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def _split_rows(n: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train rows, validation query rows, validation gallery rows ⊂ train rows)``."""
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_val = min(cfg.val_queries, int(round(cfg.val_fraction * n)))
    val_q, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    gal = np.sort(rng.choice(train_rows, size=min(cfg.val_gallery, len(train_rows)), replace=False))
    return train_rows, val_q, gal


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def train(config: TrainConfig, table=None, encoder=None) -> TrainResult:
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
        TrainError: bad settings or data.
        CollapseError: the embedding space collapsed; the outputs (with the best weights so far)
            are written before it is raised.
    """
    t0 = time.time()
    cfg = config
    cfg.check()
    weights = cfg.weights()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    from accelerate import Accelerator

    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    mixed = "bf16" if (not cpu and cfg.precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()) else "no"
    from accelerate.utils import DistributedDataParallelKwargs

    # find_unused_parameters: heads such as EfficientNet's unused classifier get no gradient.
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    torch.manual_seed(cfg.seed)

    # ---- data
    if table is None:
        if not cfg.root:
            raise TrainError("no dataset: give --root (and --csv / --dataset)")
        from geosolver.data import read_dataset

        table = read_dataset(cfg.dataset, cfg.root, split=cfg.split, csv=cfg.csv, limit=cfg.limit)
    table = table.reset_index(drop=True)
    lat_all, lon_all = validate_coords(table["lat"].to_numpy(), table["lon"].to_numpy(), "dataset coordinates")
    if len(table) < max(4, cfg.batch_size):
        raise TrainError(f"dataset has {len(table)} usable rows; need at least max(4, batch_size={cfg.batch_size})")
    train_rows, val_q, val_g = _split_rows(len(table), cfg)

    # ---- encoder
    if encoder is None:
        from geosolver.encoders import load_encoder

        encoder = load_encoder(cfg.model, device=accelerator.device, precision="fp32" if cpu else cfg.precision)
    enc = encoder
    if enc.dtype != torch.float32 and mixed == "no":
        enc.dtype = torch.float32
    num_workers = cfg.num_workers if cfg.num_workers is not None else (min(8, max(1, (os.cpu_count() or 2) - 1)) if not cpu else min(2, max(0, (os.cpu_count() or 1) - 1)))
    pixels = Pixels(table["source"].astype(str).to_numpy(), enc.preprocessor, getattr(enc, "min_side", None), num_workers, cfg.progress and main)
    eval_bs = max(cfg.batch_size, 32)
    if cfg.cache_images:
        pixels.build_cache(eval_bs)
        bad = ~pixels.ok
        if bad.any():
            log.warning("%d image(s) could not be decoded and are left out", int(bad.sum()))
            train_rows, val_q, val_g = train_rows[pixels.ok[train_rows]], val_q[pixels.ok[val_q]], val_g[pixels.ok[val_g]]
    if len(train_rows) < cfg.batch_size:
        raise TrainError(f"only {len(train_rows)} training rows for batch_size {cfg.batch_size}")

    # ---- frozen trunk run once (projection / last-blocks)
    trunk_cache = head = None
    if cfg.cache_trunk:
        from geosolver.train.trunk import split_model

        trunk_fn, head = split_model(enc.model, cfg.train, cfg.blocks)
        needed = np.union1d(np.union1d(train_rows, val_q), val_g)
        trunk_cache = TrunkCache(enc, trunk_fn, pixels, needed, train_rows if cfg.flip else None, len(table), eval_bs, cfg.progress and main)
        pixels.cache = None  # the decoded pixels are no longer needed
        train_rows, val_q, val_g = (r[trunk_cache.ok[r]] for r in (train_rows, val_q, val_g))

    def embed_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Current-model embeddings ``(len(rows), dim)`` (zeros where an image failed), ok mask."""
        if trunk_cache is None:
            return embed_rows_of(enc, pixels, rows, eval_bs)
        ok = trunk_cache.ok[rows]
        out = np.zeros((len(rows), enc.dim), np.float32)
        sel = np.flatnonzero(ok)
        with torch.no_grad(), torch.autocast(enc.device.type, dtype=enc.dtype, enabled=enc.dtype != torch.float32):
            for s_ in range(0, len(sel), eval_bs):
                part = sel[s_ : s_ + eval_bs]
                e = head(trunk_cache.get(rows[part]).to(enc.device)).float()
                out[part] = torch.nn.functional.normalize(e, dim=-1).cpu().numpy()
        return out, ok

    # ---- base embeddings: target curve and distillation targets
    rng = np.random.default_rng(cfg.seed + 1)
    base_emb = None  # (len(table), dim) float32, rows of training images
    curve: TargetCurve | None = None
    if weights.distill:
        e, ok = embed_rows(train_rows)
        base_emb = np.zeros((len(table), enc.dim), np.float32)
        base_emb[train_rows] = e
        train_rows = train_rows[ok]
    if weights.consistency:
        if cfg.target_curve:
            try:
                curve = TargetCurve.from_dict(json.loads(Path(cfg.target_curve).read_text()))
            except (OSError, ValueError, KeyError) as e:
                raise TrainError(f"cannot read target curve {cfg.target_curve}: {e}") from None
        else:
            ref = np.sort(rng.choice(train_rows, size=min(cfg.curve_sample, len(train_rows)), replace=False))
            if base_emb is not None:
                e, ok = base_emb[ref], np.ones(len(ref), bool)
            else:
                e, ok = embed_rows(ref)
            curve = fit_target_curve(e[ok], lat_all[ref][ok], lon_all[ref][ok], cfg.sharpen)
        if main:
            _write_json(out / "target_curve.json", {**curve.to_dict(), "fitted_on": None if cfg.target_curve else int(min(cfg.curve_sample, len(train_rows))), "source": cfg.target_curve})

    # ---- what is trained
    peft_model = None
    if cfg.train == "lora":
        peft_model = add_lora(enc.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    else:
        select_trainable(enc.model, cfg.train, cfg.blocks)
    if cfg.gradient_checkpointing:
        if hasattr(enc.model, "activation_checkpointing_enable"):  # transformers >= 5 name
            enc.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(enc.model, "gradient_checkpointing_enable"):
            enc.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            log.warning("%s does not support gradient checkpointing; ignored", type(enc.model).__name__)
    # HF checkpoints a layer only in training mode; the model otherwise stays in eval mode (see the
    # loop), so the checkpointed layers alone get their own `training` flag set before each step.
    ckpt_layers = [m for m in enc.model.modules() if getattr(m, "gradient_checkpointing", False) is True] if cfg.gradient_checkpointing else []
    params = trainable_parameters(enc.model)
    n_train_p, n_total_p = count_parameters(enc.model)
    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.train]
    decay = [p for n, p in params.items() if p.ndim >= 2]
    no_decay = [p for n, p in params.items() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.steps))
    module = _Features(enc) if head is None else head
    module, opt = accelerator.prepare(module, opt)

    # ---- validation
    vset = None
    if len(val_q) and len(val_g) >= 2:
        vset = ValidationSet.build(lat_all[val_q], lon_all[val_q], lat_all[val_g], lon_all[val_g], seed=cfg.seed)

    def validate() -> dict:
        nonlocal vset
        g, gok = embed_rows(val_g)
        q, qok = embed_rows(val_q)
        if not (gok.all() and qok.all()):  # drop undecodable validation images for good
            vset = ValidationSet.build(lat_all[val_q][qok], lon_all[val_q][qok], lat_all[val_g][gok], lon_all[val_g][gok], seed=cfg.seed)
        return vset.metrics(q[qok], g[gok], cfg.k, cfg.strategy)

    # ---- config + log
    effective = {
        "command": "train",
        **asdict(cfg),
        "weights": asdict(weights),
        "lr_effective": lr,
        "device": str(accelerator.device),
        "mixed_precision": mixed,
        "num_processes": world,
        "encoder": enc.identity() if hasattr(enc, "identity") else {"name": cfg.model},
        "rows": {"train": int(len(train_rows)), "val_queries": int(len(val_q)), "val_gallery": int(len(val_g))},
        "parameters": {"trainable": n_train_p, "total": n_total_p},
    }
    if main:
        _write_json(out / "config.json", effective)
    log_path = out / "train_log.jsonl"
    log_f = open(log_path, "w") if main else None

    def write_log(rec: dict) -> None:
        if log_f is not None:
            log_f.write(json.dumps(_jsonable(rec)) + "\n")
            log_f.flush()

    # ---- loop
    cells = grid_cell(lat_all, lon_all, cfg.positive_cell_deg) if cfg.positive_cell_deg else None
    sampler = CellGroupBatchSampler(
        lat_all[train_rows], lon_all[train_rows], cfg.batch_size, cfg.group_size, cfg.cell_deg,
        batches_per_epoch=max(1, len(train_rows) // cfg.batch_size), seed=cfg.seed,
    )
    batches = pixels.train_batches(sampler, train_rows, rank, world) if trunk_cache is None else trunk_batches(sampler, train_rows, rank, world)
    flip_gen = torch.Generator().manual_seed(cfg.seed + 2 + rank)
    lat_t = torch.tensor(lat_all)
    lon_t = torch.tensor(lon_all)
    base_t = torch.from_numpy(base_emb) if base_emb is not None else None
    cells_t = torch.tensor(cells) if cells is not None else None
    dev = accelerator.device

    initial: dict = {}
    best: dict = {}
    last: dict = {}
    best_step, best_state = 0, snapshot(params)
    collapse_msg: str | None = None

    def do_eval(step: int) -> None:
        nonlocal initial, best, last, best_step, best_state, collapse_msg
        if vset is None:
            return
        m = validate()
        m["step"] = step
        last = m
        if not initial:
            initial = dict(m)
        why = collapse_reason(m, initial, cfg.collapse_rank_frac, cfg.collapse_max_cosine)
        write_log({"type": "eval", **m, "collapsed": why})
        log.info("step %d: val geoscore %.1f, spearman %.3f, mean cos %.3f, eff. rank %.2f", step, m.get("geoscore", float("nan")), m["spearman"], m["mean_cosine"], m["effective_rank"])
        if why:
            collapse_msg = why
            return
        if not best or m.get("geoscore", -1) > best.get("geoscore", -1):
            best, best_step, best_state = dict(m), step, snapshot(params)

    from tqdm.auto import tqdm

    do_eval(0)
    step = 0
    bar = tqdm(total=cfg.steps, desc=f"train {cfg.train}", unit="step", disable=not (cfg.progress and main))
    # The model stays in eval mode while training: frozen BatchNorm statistics, no dropout or
    # stochastic depth — small same-cell batches would corrupt BN statistics, and the function
    # trained is then exactly the one that embeds.
    module.eval()
    try:
        while step < cfg.steps and collapse_msg is None:
            rows, px = next(batches)
            f = torch.rand(len(rows), generator=flip_gen) < 0.5 if cfg.flip else None
            if trunk_cache is not None:
                px = trunk_cache.get(rows, f)
            elif f is not None:
                px = torch.where(f[:, None, None, None], px.flip(-1), px)
            idx = torch.from_numpy(rows)
            for m in ckpt_layers:
                m.training = True  # this module only, not its children (dropout stays off)
            with accelerator.autocast():
                feats = module(px.to(dev, non_blocking=True))
            loss, parts = combined_loss(
                feats, lat_t[idx].to(dev), lon_t[idx].to(dev), weights,
                radius_km=cfg.radius_km, temperature=cfg.temperature,
                cell=cells_t[idx].to(dev) if cells_t is not None else None,
                target=curve, balance_edges_km=cfg.balance_edges_km,
                base=base_t[idx].to(dev) if base_t is not None else None,
            )
            if not torch.isfinite(loss):
                raise TrainError(f"loss became {float(loss)} at step {step + 1}; lower the learning rate (now {lr:g})")
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_([p for p in params.values()], cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            write_log({"type": "step", "step": step, "loss": float(loss.detach()), "parts": parts, "lr": sched.get_last_lr()[0], "batch": int(len(rows)), "seconds": round(time.time() - t0, 3)})
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                do_eval(step)
        if collapse_msg is None and (not last or last.get("step") != step):
            do_eval(step)
    finally:
        bar.close()

    # ---- save the best weights
    module.eval()
    if vset is None:
        best_step, best_state = step, snapshot(params)
    restore(params, best_state)
    if peft_model is not None:
        enc.model = merge_lora(peft_model)
    enc.model.requires_grad_(False)
    enc.model.eval()
    disable = getattr(enc.model, "activation_checkpointing_disable", None) or getattr(enc.model, "gradient_checkpointing_disable", None)
    if cfg.gradient_checkpointing and disable is not None:
        disable()
    model_dir = out / "model"
    accelerator.wait_for_everyone()
    if main:
        enc.save(model_dir)
        if log_f is not None:
            log_f.close()
        try:
            plot_training(log_path, out / "training.png")
        except Exception as e:  # noqa: BLE001 — a plot must not lose a finished run
            log.warning("could not draw training.png: %s", e)
        summary = {"steps_done": step, "best_step": best_step, "initial_metrics": initial, "best_metrics": best, "final_metrics": last, "collapsed": collapse_msg, "seconds": round(time.time() - t0, 2)}
        _write_json(out / "config.json", {**effective, "result": summary})
    if collapse_msg is not None:
        raise CollapseError(
            f"training stopped at step {step}: the embedding space collapsed ({collapse_msg}); "
            f"the best weights before that (step {best_step}) are in {model_dir}. "
            "Lower the learning rate, or add --w-uniformity / --w-distill."
        )
    return TrainResult(out, model_dir, step, best_step, initial, best, last, time.time() - t0, enc)
