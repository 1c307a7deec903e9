"""What is trained: freezing, LoRA adapters, the model surgery of a run (:func:`choose_trainable`,
:class:`Surgery`, gradient checkpointing) and snapshots of the trainable weights.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from geosolver.errors import TrainError, TrainSetupError
from geosolver.train.config import TRAIN_MODES

if TYPE_CHECKING:
    from geosolver.encoders import Encoder
    from geosolver.train.config import TrainConfig

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
        from peft import LoraConfig, get_peft_model  # peft: the optional [train] extra, LoRA only
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


# ----------------------------------------------------------------------------------------------
# model surgery: what a run trains (the loop's stage 5)
# ----------------------------------------------------------------------------------------------
@dataclass
class Surgery:
    """What is trained.

    Attributes:
        params: name → trainable parameter.
        peft_model: the LoRA wrapper (merged on save), or None.
        ckpt_layers: the layers that recompute their forward pass in backward (gradient checkpointing).
    """

    params: dict[str, torch.nn.Parameter]
    peft_model: Any | None
    ckpt_layers: list[torch.nn.Module]


def check_has_weights(enc: Encoder) -> None:
    """Raise :class:`TrainSetupError` for an encoder with no weights at all (``histogram``)."""
    if next(enc.model.parameters(), None) is None:
        what = f"the {enc.name} encoder" + (" (a fixed colour count)" if getattr(enc, "backend", "") == "histogram" else "")
        raise TrainSetupError(no_weights_message(what))


def choose_trainable(cfg: TrainConfig, enc: Encoder) -> Surgery:
    """Freeze the model and unfreeze the ``cfg.train`` part (or add LoRA adapters); turn on
    gradient checkpointing when asked."""
    check_has_weights(enc)
    peft_model = None
    if cfg.train == "lora":
        peft_model = add_lora(enc.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    else:
        select_trainable(enc.model, cfg.train, cfg.blocks)
    ckpt_layers = enable_checkpointing(enc.model) if cfg.gradient_checkpointing else []
    params = trainable_parameters(enc.model)
    if not params:
        raise TrainSetupError(f"--train {cfg.train} leaves nothing to train in {enc.name}; choose another --train mode")
    return Surgery(params, peft_model, ckpt_layers)


def enable_checkpointing(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Turn on gradient checkpointing (transformers models); returns the checkpointed layers.

    HF checkpoints a layer only in training mode; the model otherwise stays in eval mode (see
    :meth:`Trainer.fit`), so the checkpointed layers alone get their ``training`` flag set before
    each step.
    """
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        log.warning("%s does not support gradient checkpointing; ignored", type(model).__name__)
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def disable_checkpointing(model: torch.nn.Module) -> None:
    disable = getattr(model, "activation_checkpointing_disable", None) or getattr(model, "gradient_checkpointing_disable", None)
    if disable is not None:
        disable()


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
