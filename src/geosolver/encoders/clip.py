"""Hugging Face ``transformers`` CLIP backend (StreetCLIP, OpenAI CLIP, local ``save_pretrained`` dirs)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geosolver.encoders.base import Encoder, EncoderError
from geosolver.encoders.preprocess import ResizeCropNormalize

log = logging.getLogger(__name__)


def _pooled(out: Any) -> torch.Tensor:
    """``get_image_features``/``get_text_features`` return a tensor in transformers 4 and an
    output object whose ``pooler_output`` is the projected embedding in transformers 5."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise EncoderError(f"unexpected CLIP feature output type {type(out).__name__}")
    return pooled


def check_clip_dir(path: Path) -> None:
    """Raise :class:`EncoderError` if ``path/config.json`` is not a CLIP config."""
    try:
        with open(path / "config.json") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError) as e:
        raise EncoderError(f"cannot read {path / 'config.json'}: {e}") from None
    if model_type != "clip":
        raise EncoderError(f"{path} holds a {model_type!r} model; only CLIP models (model_type 'clip') are supported")


class ClipEncoder(Encoder):
    """A ``transformers`` ``CLIPModel``: image embeddings are ``get_image_features`` (projected).

    Args:
        source: hub id or local directory, as given to ``from_pretrained``.
        name: canonical name recorded in :meth:`identity`.
        device: resolved device.
        dtype: autocast dtype for inference.
    """

    backend = "clip"

    def __init__(self, source: str, name: str, device: torch.device, dtype: torch.dtype):
        from transformers import CLIPModel

        model = CLIPModel.from_pretrained(source, dtype=torch.float32)
        self.model = model.to(device).eval()
        self.name = name
        self.device = device
        self.dtype = dtype
        self.dim = int(model.config.projection_dim)
        commit = getattr(model.config, "_commit_hash", None)
        self.revision = str(commit) if commit else "local"
        self.image_processor = self._load_image_processor(source, int(model.config.vision_config.image_size))
        self.preprocessor = ResizeCropNormalize.from_processor_config(self.image_processor.to_dict())
        if (self.preprocessor.crop_h, self.preprocessor.crop_w) != (model.config.vision_config.image_size,) * 2:
            log.warning(
                "%s: preprocessor crop %dx%d differs from the model's image_size %d",
                name, self.preprocessor.crop_h, self.preprocessor.crop_w, model.config.vision_config.image_size,
            )
        self.image_size = self.preprocessor.crop_h
        self.min_side = self.preprocessor.min_side
        self._source = source
        self._tokenizer: Any = None

    @staticmethod
    def _load_image_processor(source: str, image_size: int) -> Any:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        try:
            return CLIPImageProcessorPil.from_pretrained(source)
        except (OSError, ValueError) as e:
            log.warning("%s: no usable preprocessor_config.json (%s); using CLIP defaults at %d px", source, e, image_size)
            return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    @property
    def tokenizer(self) -> Any:
        """The CLIP tokenizer saved with the model (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self._source)
            except Exception as e:  # noqa: BLE001 — any failure means: no tokenizer
                raise EncoderError(f"{self.name}: no tokenizer could be loaded ({type(e).__name__}: {e})") from None
        return self._tokenizer

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embed text prompts into the image space.

        Args:
            texts: prompts, e.g. ``"A Street View photo in Norway."``.
            batch_size: prompts per forward pass.

        Returns:
            float32 ``(len(texts), dim)``, rows L2-normalised.
        """
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        max_len = int(self.model.config.text_config.max_position_embeddings)
        self.model.eval()
        for start in range(0, len(texts), batch_size):
            tok = self.tokenizer(
                texts[start : start + batch_size], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                e = _pooled(self.model.get_text_features(**tok)).float()
            out[start : start + len(e)] = torch.nn.functional.normalize(e, dim=-1).cpu().numpy()
        return out

    def save(self, path: str | os.PathLike) -> None:
        """``save_pretrained`` of model, image processor and tokenizer (if any): plain
        ``transformers.CLIPModel.from_pretrained(path)`` loads the result."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        try:
            tok = self.tokenizer
        except EncoderError:
            tok = None
        if tok is not None:
            tok.save_pretrained(path)
