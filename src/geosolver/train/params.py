"""What is trained: freezing, LoRA adapters, and snapshots of the trainable weights.

Modes (``TRAIN_MODES``):

* ``projection`` — CLIP: ``visual_projection`` only. Other models: the modules after the main
  block list (e.g. EfficientNet's head convolution + batch norm).
* ``last-blocks`` — the last ``N`` blocks of the vision tower plus everything after them
  (CLIP: ``vision_model.encoder.layers[-N:]`` + ``post_layernorm`` + ``visual_projection``).
* ``lora`` — LoRA adapters (``peft``) on the attention projections ``q_proj``/``k_proj``/
  ``v_proj``/``out_proj`` of the vision tower (CLIP only); merged into the weights on save.
* ``all`` — every parameter that shapes the image embedding (CLIP: vision tower + projection;
  the text tower stays frozen).

For non-CLIP models the "block list" is the longest ``nn.ModuleList`` in the model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from geosolver.errors import TrainError, TrainSetupError
from geosolver.train.config import TRAIN_MODES

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def missing_train_extra(e: ImportError) -> TrainError:
    """The one-line error for a missing ``[train]`` extra (``peft``, ``accelerate``)."""
    return TrainError(f"training needs the [train] extra ({e.name or e} is missing): pip install 'geosolver[train]'")


def no_weights_message(what: str) -> str:
    """The one line for a model with nothing to train (e.g. the ``histogram`` encoder)."""
    return (f"{what} has no trainable weights, so no --train mode can fine-tune it; fine-tune a neural encoder "
            "instead: --model efficientnet-lite0, or a CLIP model (streetclip, clip-vit-b-32, a hub id or a local directory)")


def is_clip(model: torch.nn.Module) -> bool:
    """True for a ``transformers`` ``CLIPModel`` (has ``vision_model`` and ``visual_projection``)."""
    return hasattr(model, "vision_model") and hasattr(model, "visual_projection")


def _block_list(model: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """``(parent, attribute name, ModuleList)`` of the longest ``ModuleList`` in ``model``."""
    best = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ModuleList) and (best is None or len(child) > len(best[2])):
                best = (parent, name, child)
    if best is None:
        raise TrainSetupError(f"{type(model).__name__}: no block list (nn.ModuleList) found; use --train all")
    return best


def _modules_after(parent: torch.nn.Module, name: str) -> list[torch.nn.Module]:
    names = [n for n, _ in parent.named_children()]
    return [getattr(parent, n) for n in names[names.index(name) + 1 :]]


def select_trainable(model: torch.nn.Module, mode: str, blocks: int = 2) -> list[torch.nn.Module]:
    """Freeze ``model`` and unfreeze the modules of ``mode`` (except ``lora``: see :func:`add_lora`).

    Args:
        model: the encoder's ``torch.nn.Module``.
        mode: one of :data:`TRAIN_MODES` other than ``lora``.
        blocks: number of final blocks for ``last-blocks``.

    Returns:
        the unfrozen modules.

    Raises:
        TrainSetupError: unknown mode or ``blocks`` out of range.
    """
    if mode not in TRAIN_MODES or mode == "lora":
        raise TrainSetupError(f"select_trainable: unknown mode {mode!r}; use one of projection, last-blocks, all")
    if next(model.parameters(), None) is None:
        raise TrainSetupError(no_weights_message(type(model).__name__))
    model.requires_grad_(False)
    if is_clip(model):
        layers = model.vision_model.encoder.layers
        head = [model.vision_model.post_layernorm, model.visual_projection]
        if mode == "projection":
            mods = [model.visual_projection]
        elif mode == "all":
            mods = [model.vision_model, model.visual_projection]
        else:
            mods = _last(layers, blocks) + head
    elif mode == "all":  # needs no block list
        mods = [model]
    else:
        parent, name, layers = _block_list(model)
        head = _modules_after(parent, name)
        if mode == "projection":
            mods = head
        else:
            mods = _last(layers, blocks) + head
    for m in mods:
        m.requires_grad_(True)
    return mods


def _last(layers: torch.nn.ModuleList, n: int) -> list[torch.nn.Module]:
    if not 1 <= n <= len(layers):
        raise TrainSetupError(f"--blocks must be between 1 and {len(layers)} (the model's block count), got {n}")
    return list(layers[len(layers) - n :])


def add_lora(model: torch.nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> Any:
    """Inject LoRA adapters into the vision tower's attention projections, in place.

    Only the adapters are trainable afterwards. ``model`` itself keeps working (its linear layers
    are wrapped); the returned ``peft`` model is needed to merge (:func:`merge_lora`).

    Returns:
        the ``peft.PeftModel`` wrapping ``model``.
    """
    if not is_clip(model):
        raise TrainSetupError(f"--train lora supports CLIP models only (got {type(model).__name__}); use last-blocks or all")
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise missing_train_extra(e) from None
    model.requires_grad_(False)
    cfg = LoraConfig(
        r=int(r),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=r".*vision_model.*\.(" + "|".join(LORA_TARGETS) + r")$",
        bias="none",
    )
    return get_peft_model(model, cfg)


def merge_lora(peft_model: Any) -> torch.nn.Module:
    """Merge the adapters into the base weights and remove them; returns the plain model
    (the same object the adapters were injected into)."""
    return peft_model.merge_and_unload()


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Name → parameter for every parameter with ``requires_grad``."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """A CPU copy of the given parameters (for keeping the best checkpoint)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in params.items()}


def restore(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`snapshot` back into the parameters."""
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n].to(p.device))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
