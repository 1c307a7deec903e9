"""Every setting of a fine-tuning run, in one place: :class:`TrainConfig`.

Each field carries its command-line help (and choices) in ``field(metadata=...)``; the options of
``geosolver train`` are derived from it by :func:`geosolver.cli.args.add_config_arguments`, so a
setting is declared once. Field ``out`` becomes ``--out``, ``w_contrastive`` ``--w-contrastive`` (and
``--w_contrastive``), a boolean ``flip = True`` ``--flip`` / ``--no-flip``.

No torch, transformers or pandas here: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from geosolver.data import DATASET_KINDS
from geosolver.encoders import DEFAULT_ENCODER
from geosolver.errors import TrainError
from geosolver.names import STRATEGIES

#: What ``--train`` can train (see :mod:`geosolver.train.params`).
TRAIN_MODES = ("projection", "last-blocks", "lora", "all")
#: The loss terms, in the order :class:`ObjectiveWeights` lists them; term ``t`` has the weight
#: field ``w_t`` in :class:`TrainConfig` and the key ``t`` in ``train_log.jsonl``'s ``parts``.
OBJECTIVE_NAMES = ("contrastive", "consistency", "uniformity", "distill", "rnc", "soft")
#: ``--objective`` presets: name → the weights it sets (term → weight; a term it does not name
#: gets 0). A preset fills only the weights left as None (``w_contrastive``, ``w_consistency``,
#: ``w_rnc``, ``w_soft`` by default); an explicit ``--w-TERM`` always wins.
OBJECTIVE_PRESETS: dict[str, dict[str, float]] = {
    "geo-contrastive": {"contrastive": 1.0},
    "distance-consistency": {"consistency": 1.0},
    "both": {"contrastive": 1.0, "consistency": 1.0},
    "rank-n-contrast": {"rnc": 1.0},
    "soft-contrastive": {"soft": 1.0},
}
#: Default ``soft_scale_km``: the soft-contrastive target weight falls by e every 500 km.
DEFAULT_SOFT_SCALE_KM = 500.0
#: Learning rate by training mode when none is given.
DEFAULT_LR: dict[str, float] = {"projection": 1e-3, "last-blocks": 2e-5, "lora": 1e-4, "all": 1e-5}
#: Distance-bin edges (km) used to balance pairs inside a batch: fine near 0 where retrieval
#: lives, logarithmic beyond. The last edge exceeds the largest distance on Earth (≈ 20 015 km).
DEFAULT_BALANCE_EDGES_KM: tuple[float, ...] = (0.0, 1.0, 5.0, 25.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 20100.0)
#: ``--precision``: ``auto`` = bf16 autocast on a GPU that supports it, else float32.
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ObjectiveWeights:
    """Weights of the loss terms (0 disables a term)."""

    contrastive: float = 0.0
    consistency: float = 0.0
    uniformity: float = 0.0
    distill: float = 0.0
    rnc: float = 0.0
    soft: float = 0.0

    def active(self) -> list[str]:
        return [n for n in OBJECTIVE_NAMES if getattr(self, n) != 0]


class TrainModeAction(argparse.Action):
    """``--train MODE [N]``: sets ``train``, and ``blocks`` for ``last-blocks N``."""

    def __call__(self, parser, namespace, values, option_string=None):
        mode, *rest = values
        if mode not in TRAIN_MODES:
            raise argparse.ArgumentError(self, f"unknown mode {mode!r}; choose one of {', '.join(TRAIN_MODES)}")
        if len(rest) > 1 or (rest and mode != "last-blocks"):
            raise argparse.ArgumentError(self, f"only 'last-blocks N' takes a number; got {' '.join(values)}")
        setattr(namespace, self.dest, mode)
        if rest:
            try:
                namespace.blocks = int(rest[0])
            except ValueError:
                raise argparse.ArgumentError(self, f"last-blocks N: N must be an integer, got {rest[0]!r}") from None


def _opt(help: str, **argparse_kw) -> dict:
    """Field metadata: the option's help text plus further ``add_argument`` keywords."""
    return {"help": help, **argparse_kw}


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (written to ``OUT/config.json``).

    Each field's meaning is its ``metadata["help"]`` (``geosolver train --help`` prints them).
    In short: the dataset (``root`` … ``limit``, as for ``geosolver embed``), the objectives
    (``objective`` preset, then the ``w_*`` weights; distances in km), what is trained
    (``train``, ``blocks``, ``lora_*``), the optimiser (``steps`` … ``grad_clip``), validation
    (``eval_every`` … ``collapse_max_cosine``; ``val_fraction = 0``: no validation, no collapse
    check, the final weights are kept) and the runtime (caches, workers, device, seed).
    """

    out: str = field(metadata=_opt("output directory"))
    # ---- dataset
    root: str | None = field(default=None, metadata=_opt(
        "dataset root: OSV5M root, image folder, or tar shard dir/glob", aliases=["--data"],
        required=True))  # required on the command line; the Python API may pass a table instead
    dataset: str = field(default="folder", metadata=_opt("dataset layout", choices=DATASET_KINDS))
    split: str | None = field(default=None, metadata=_opt("OSV5M split (train/test); sub-folder or CSV name for the others"))
    csv: str | None = field(default=None, metadata=_opt("CSV file (folder: default ROOT/metadata.csv)"))
    limit: int | None = field(default=None, metadata=_opt("keep only the first N usable rows"))
    model: str = field(default=DEFAULT_ENCODER, metadata=_opt("encoder name, hub id or local directory"))
    # ---- objectives
    objective: str = field(default="distance-consistency", metadata=_opt(
        "preset for the weights left unset (--w-contrastive, --w-consistency, --w-rnc, --w-soft): it sets its own "
        "term's weight to 1 (both: contrastive and consistency) and the others to 0", choices=tuple(OBJECTIVE_PRESETS)))
    w_contrastive: float | None = field(default=None, metadata=_opt("weight of the geo-contrastive InfoNCE term; None: the --objective preset's"))
    w_consistency: float | None = field(default=None, metadata=_opt("weight of the distance-consistency term; None: the --objective preset's"))
    w_rnc: float | None = field(default=None, metadata=_opt(
        "weight of the Rank-N-Contrast term (Zha et al., NeurIPS 2023; label distance = haversine km, "
        "cosine similarity / --temperature); None: the --objective preset's"))
    w_soft: float | None = field(default=None, metadata=_opt(
        "weight of the soft-contrastive term (InfoNCE with targets proportional to exp(-d / --soft-scale-km)); "
        "None: the --objective preset's"))
    w_uniformity: float = field(default=0.0, metadata=_opt("weight of the uniformity (anti-collapse) term"))
    w_distill: float = field(default=0.1, metadata=_opt("weight of the distillation-to-base term"))
    radius_km: float = field(default=25.0, metadata=_opt("contrastive positives: pairs closer than this (km)"))
    positive_cell_deg: float | None = field(default=None, metadata=_opt("also count pairs in the same cell of this size (degrees) as positives"))
    temperature: float = field(default=0.07, metadata=_opt(
        "softmax temperature of the similarity logits (cosine / T) of geo-contrastive, rank-n-contrast and soft-contrastive"))
    soft_scale_km: float = field(default=DEFAULT_SOFT_SCALE_KM, metadata=_opt(
        "soft-contrastive: distance scale (km) of the targets q_ij ~ exp(-d_ij / scale)"))
    sharpen: float = field(default=1.0, metadata=_opt("stretch the target curve: mu' = mu_far + (mu - mu_far) * s, <= 1"))
    target_curve: str | None = field(default=None, metadata=_opt(
        "JSON curve (knots_km, sim) to use instead of fitting one, e.g. another run's target_curve.json"))
    consistency_max_km: float | None = field(default=None, metadata=_opt(
        "distance-consistency: only pairs closer than this (km) are constrained, e.g. where the base "
        "model's curve stops falling (geosolver analyze); None: every pair"))
    curve_sample: int = field(default=2000, metadata=_opt("training images embedded by the base model to fit the target curve"))
    balance_edges_km: list[float] = field(default_factory=lambda: list(DEFAULT_BALANCE_EDGES_KM), metadata=_opt(
        "distance bins (km) that get equal weight in the consistency loss"))
    # ---- what is trained
    train: str = field(default="last-blocks", metadata=_opt(
        "what is trained: " + " | ".join(m + " N" if m == "last-blocks" else m for m in TRAIN_MODES),
        nargs="+", metavar=("MODE", "N"), action=TrainModeAction))
    blocks: int = field(default=2, metadata=_opt("N of --train last-blocks N"))
    lora_r: int = field(default=8, metadata=_opt("LoRA rank"))
    lora_alpha: float = field(default=16.0, metadata=_opt("LoRA alpha"))
    lora_dropout: float = field(default=0.0, metadata=_opt("LoRA dropout"))
    # ---- optimisation
    steps: int = field(default=500, metadata=_opt("optimiser steps"))
    batch_size: int = field(default=64, metadata=_opt("images per step and process"))
    group_size: int = field(default=4, metadata=_opt("images per same-cell group in a batch"))
    cell_deg: float = field(default=2.0, metadata=_opt("cell size of the groups, degrees"))
    lr: float | None = field(default=None, metadata=_opt(
        "peak learning rate; None: by mode (" + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items()) + ")"))
    weight_decay: float = field(default=0.01, metadata=_opt("AdamW weight decay (matrices only)"))
    warmup_steps: int = field(default=20, metadata=_opt("linear warm-up steps before the cosine decay"))
    grad_clip: float = field(default=1.0, metadata=_opt("max gradient norm (0 = off)"))
    # ---- validation
    eval_every: int = field(default=100, metadata=_opt("steps between validations (0: start and end only)"))
    val_fraction: float = field(default=0.1, metadata=_opt("share of rows held out as validation queries (0: no validation)"))
    val_queries: int = field(default=500, metadata=_opt("at most this many validation queries"))
    val_gallery: int = field(default=2000, metadata=_opt("training rows used as the validation gallery"))
    k: int = field(default=10, metadata=_opt("neighbours that vote"))
    strategy: str = field(default="densest", metadata=_opt("kNN voting strategy", choices=STRATEGIES))
    collapse_rank_frac: float = field(default=0.5, metadata=_opt("stop if the effective rank falls below this share of its initial value"))
    collapse_max_cosine: float = field(default=0.95, metadata=_opt("stop if the mean pairwise cosine rises above this"))
    # ---- runtime
    gradient_checkpointing: bool = field(default=False, metadata=_opt("trade compute for memory (transformers models)"))
    cache_images: bool = field(default=False, metadata=_opt("decode + preprocess every image once and keep the pixels (float16) in RAM"))
    cache_trunk: bool = field(default=False, metadata=_opt(
        "with --train projection / last-blocks: run the frozen part once per image (and its mirror image) "
        "and train the head alone (fast on CPU)"))
    flip: bool = field(default=True, metadata=_opt("random horizontal flips (--no-flip: none)"))
    num_workers: int | None = field(default=None, metadata=_opt("image decoding workers; None: by device"))
    device: str = field(default="auto", metadata=_opt("auto, cpu, cuda"))
    precision: str = field(default="auto", metadata=_opt("auto = bf16 autocast on GPU", choices=TRAIN_PRECISIONS))
    seed: int = field(default=0, metadata=_opt("seeds the split, the sampler, flips and the model's random parts"))
    progress: bool = field(default=True, metadata=_opt("show progress bars (--no-progress: none)"))
    # ---- resuming
    save_every: int = field(default=100, metadata=_opt(
        "steps between checkpoints (OUT/checkpoint.pt: trained weights, optimiser, schedule, RNG and sampler "
        "state; the last step is saved too); the same command run again in the same --out resumes from it (0: none)"))
    overwrite: bool = field(default=False, metadata=_opt(
        "start over in an --out that holds another training run (its checkpoint and outputs are replaced) or "
        "files train did not write (same-named ones are overwritten)"))

    def __post_init__(self) -> None:
        """Refuse a nonsensical number at once, naming the option as typed (``--lr``)."""
        validate_numbers(self)

    def weights(self) -> ObjectiveWeights:
        """The effective loss weights (preset, then explicit overrides)."""
        if self.objective not in OBJECTIVE_PRESETS:
            raise TrainError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVE_PRESETS)}")
        preset = OBJECTIVE_PRESETS[self.objective]
        explicit = {n: getattr(self, "w_" + n) for n in OBJECTIVE_NAMES}
        return ObjectiveWeights(**{n: float(preset.get(n, 0.0) if v is None else v) for n, v in explicit.items()})

    def learning_rate(self) -> float:
        """The peak learning rate: ``lr``, else :data:`DEFAULT_LR` of the mode."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.train]

    def check(self) -> None:
        """Raise :class:`TrainError` naming the first bad setting."""
        validate_numbers(self)  # again: a field may have been changed after construction
        w = self.weights()
        if not w.active():
            raise TrainError("every loss weight is 0: nothing to train")
        if any(getattr(w, n) < 0 for n in OBJECTIVE_NAMES):
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


# ----------------------------------------------------------------------------------------------
# numeric settings: (field, kind, low, high, low inclusive, high inclusive, None allowed)
# ----------------------------------------------------------------------------------------------
_INF = math.inf
#: Every numeric :class:`TrainConfig` field and the range it must lie in.
NUMERIC_RULES: tuple[tuple[str, type, float, float, bool, bool, bool], ...] = (
    ("limit", int, 1, _INF, True, False, True),
    ("w_contrastive", float, 0, _INF, True, False, True),
    ("w_consistency", float, 0, _INF, True, False, True),
    ("w_uniformity", float, 0, _INF, True, False, False),
    ("w_distill", float, 0, _INF, True, False, False),
    ("w_rnc", float, 0, _INF, True, False, True),
    ("w_soft", float, 0, _INF, True, False, True),
    ("radius_km", float, 0, _INF, False, False, False),
    ("positive_cell_deg", float, 0, 180, False, True, True),
    ("temperature", float, 0, _INF, False, False, False),
    ("soft_scale_km", float, 0, _INF, False, False, False),
    ("consistency_max_km", float, 0, _INF, False, False, True),
    ("sharpen", float, 0, _INF, False, False, False),
    ("curve_sample", int, 2, _INF, True, False, False),
    ("blocks", int, 1, _INF, True, False, False),
    ("lora_r", int, 1, _INF, True, False, False),
    ("lora_alpha", float, 0, _INF, False, False, False),
    ("lora_dropout", float, 0, 1, True, False, False),
    ("steps", int, 1, _INF, True, False, False),
    ("batch_size", int, 2, _INF, True, False, False),  # the pair losses need two images
    ("group_size", int, 1, _INF, True, False, False),
    ("cell_deg", float, 0, 180, False, True, False),
    ("lr", float, 0, _INF, False, False, True),
    ("weight_decay", float, 0, _INF, True, False, False),
    ("warmup_steps", int, 0, _INF, True, False, False),
    ("grad_clip", float, 0, _INF, True, False, False),
    ("eval_every", int, 0, _INF, True, False, False),
    ("val_fraction", float, 0, 1, True, False, False),
    ("val_queries", int, 1, _INF, True, False, False),
    ("val_gallery", int, 2, _INF, True, False, False),
    ("k", int, 1, _INF, True, False, False),
    ("collapse_rank_frac", float, 0, 1, True, True, False),
    ("collapse_max_cosine", float, -1, 1, True, True, False),
    ("num_workers", int, 0, _INF, True, False, True),
    ("seed", int, 0, _INF, True, False, False),
    ("save_every", int, 0, _INF, True, False, False),
)


def option_name(field_name: str) -> str:
    """The command-line spelling of a :class:`TrainConfig` field: ``w_distill`` → ``--w-distill``."""
    return "--" + field_name.replace("_", "-")


def _range_text(kind: type, lo: float, hi: float, lo_in: bool, hi_in: bool) -> str:
    what = "an integer" if kind is int else "a finite number"
    if hi == _INF:
        return f"{what} {'>=' if lo_in else '>'} {lo:g}"
    return f"{what} in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def validate_numbers(cfg: TrainConfig) -> None:
    """Raise :class:`TrainError` naming the first numeric setting that is out of range, not finite
    or not a number, as ``--option must be ... , got VALUE``."""
    for name, kind, lo, hi, lo_in, hi_in, optional in NUMERIC_RULES:
        value = getattr(cfg, name)
        if value is None and optional:
            continue
        opt = option_name(name) + (" (N of --train last-blocks N)" if name == "blocks" else "")
        need = _range_text(kind, lo, hi, lo_in, hi_in)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and kind is int and isinstance(value, float):
            ok = value.is_integer()
        ok = ok and math.isfinite(value) and (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
        if not ok:
            raise TrainError(f"{opt} must be {need}, got {value!r}")
    edges = cfg.balance_edges_km
    try:
        vals = [float(v) for v in edges]
    except (TypeError, ValueError):
        raise TrainError(f"--balance-edges-km must be numbers (km), got {edges!r}") from None
    if len(vals) < 2 or not all(math.isfinite(v) and v >= 0 for v in vals) or any(b <= a for a, b in zip(vals, vals[1:])):
        raise TrainError(f"--balance-edges-km must be >= 2 finite, non-negative, strictly increasing values (km), got {list(edges)}")
