"""Image preprocessing in plain numpy + PIL: resize shortest side, centre crop, scale, normalise.

:class:`ResizeCropNormalize` reproduces ``transformers``' ``CLIPImageProcessor`` (PIL backend, the
one transformers 5 uses without torchvision) exactly in its geometry and to float rounding in its
values, at a fraction of the cost, and it is a small picklable object with no model inside, so
``DataLoader`` worker processes can run it.

What ``CLIPImageProcessor`` does in transformers 5 (``image_processing_backends.PilBackend``), and
what this module does the same way:

1. ``convert_to_rgb`` (alpha composited on white) — here the caller converts with
   :func:`geosolver.images.to_rgb`, which does the same.
2. Resize with PIL (``Image.resize``, resample from the config: bicubic for CLIP, no
   ``reducing_gap``) so the shorter side equals ``size``; the longer side is
   ``int(size * long / short)`` — truncated, not rounded.
3. Centre crop to ``crop_size``: ``top = (h - crop_h) // 2``, ``left = (w - crop_w) // 2``; if the
   image is smaller than the crop it is zero-padded (black, before normalisation) with the image
   placed at ``ceil(pad / 2)``.
4. Multiply by ``rescale_factor`` (1/255) and normalise ``(x - mean) / std`` per channel.

The output is a float32 array ``(3, crop_h, crop_w)``, channels first, C-contiguous.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
from PIL import Image

from geosolver.errors import EncoderError
from geosolver.images import to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE_NAMES = {
    int(Image.Resampling.NEAREST): "nearest",
    int(Image.Resampling.BILINEAR): "bilinear",
    int(Image.Resampling.BICUBIC): "bicubic",
    int(Image.Resampling.LANCZOS): "lanczos",
    int(Image.Resampling.BOX): "box",
    int(Image.Resampling.HAMMING): "hamming",
}


@dataclass(frozen=True)
class ResizeCropNormalize:
    """Picklable ``PIL.Image -> np.ndarray float32 (3, crop_h, crop_w)`` preprocessing.

    Attributes:
        size: target length in pixels of the shorter side after resizing; ``None`` skips resizing.
        crop_h: centre-crop height in pixels.
        crop_w: centre-crop width in pixels.
        mean: per-channel mean subtracted after scaling (RGB order).
        std: per-channel divisor after subtracting ``mean``.
        scale: factor applied to the 0..255 pixel values before normalising (1/255 for CLIP).
        resample: PIL resampling filter id (``Image.Resampling.BICUBIC`` = 3 for CLIP).
        squash: resize to ``size x size`` ignoring the aspect ratio (a processor config with
            ``size = {"height": s, "width": s}``) instead of resizing the shorter side.
    """

    size: int | None
    crop_h: int
    crop_w: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    scale: float = 1.0 / 255.0
    resample: int = int(Image.Resampling.BICUBIC)
    squash: bool = False
    _mul: np.ndarray = field(init=False, repr=False, compare=False)
    _add: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (x * scale - mean) / std  ==  x * (scale / std) + (-mean / std): one fused multiply-add.
        mean = np.asarray(self.mean, np.float64)
        std = np.asarray(self.std, np.float64)
        object.__setattr__(self, "_mul", (self.scale / std).astype(np.float32).reshape(3, 1, 1))
        object.__setattr__(self, "_add", (-mean / std).astype(np.float32).reshape(3, 1, 1))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_processor_config(cls, cfg: Mapping[str, Any]) -> "ResizeCropNormalize":
        """Build from a ``preprocessor_config.json`` dict (or ``CLIPImageProcessor.to_dict()``).

        Missing keys take CLIP's defaults (224, bicubic, OpenAI mean/std, 1/255).
        """
        size_cfg = cfg.get("size", {"shortest_edge": 224})
        squash = False
        if isinstance(size_cfg, Mapping):
            if size_cfg.get("longest_edge"):
                raise EncoderError(f"unsupported resize target with longest_edge {size_cfg}")
            if size_cfg.get("shortest_edge"):
                size = int(size_cfg["shortest_edge"])
            elif size_cfg.get("height") and size_cfg.get("width"):
                # Exact (aspect-ignoring) resize to height x width.
                if int(size_cfg["height"]) != int(size_cfg["width"]):
                    raise EncoderError(f"unsupported non-square resize target {size_cfg}")
                size, squash = int(size_cfg["height"]), True
            else:
                raise EncoderError(f"unsupported resize target {size_cfg}")
        else:
            size = int(size_cfg)
        if cfg.get("do_resize") is False:
            size = None
        crop = cfg.get("crop_size", size or 224)
        if isinstance(crop, Mapping):
            crop_h, crop_w = int(crop["height"]), int(crop["width"])
        else:
            crop_h = crop_w = int(crop)
        if cfg.get("do_center_crop") is False:
            if size is None:
                raise EncoderError("preprocessing without resize and without crop gives variable sizes")
            crop_h = crop_w = size
        mean = tuple(float(v) for v in (cfg.get("image_mean") or OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in (cfg.get("image_std") or OPENAI_CLIP_STD))
        if cfg.get("do_normalize") is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        scale = float(cfg.get("rescale_factor", 1.0 / 255.0)) if cfg.get("do_rescale", True) else 1.0
        resample = int(cfg.get("resample", int(Image.Resampling.BICUBIC)))
        return cls(size=size, crop_h=crop_h, crop_w=crop_w, mean=mean, std=std, scale=scale, resample=resample, squash=squash)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- properties
    @property
    def image_size(self) -> int:
        """Side of the (square) output in pixels."""
        return self.crop_h

    @property
    def min_side(self) -> int:
        """Shorter side an input needs before resizing (for JPEG draft decoding)."""
        return int(self.size or max(self.crop_h, self.crop_w))

    def describe(self) -> str:
        """One-line human-readable description (goes into store manifests)."""
        rs = _RESAMPLE_NAMES.get(self.resample, str(self.resample))
        fmt = lambda v: "(" + ",".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
        if not self.size:
            resize = "no resize"
        elif self.squash:
            resize = f"resize to {self.size}x{self.size} ({rs}, aspect ignored)"
        else:
            resize = f"resize shorter side to {self.size} ({rs}, long side truncated)"
        return (
            f"{resize}; centre crop {self.crop_h}x{self.crop_w}; x*{self.scale:.6g}; "
            f"normalise mean {fmt(self.mean)} std {fmt(self.std)}"
        )

    def config(self) -> dict:
        """The parameters as a JSON-serialisable dict."""
        d = asdict(self)
        d.pop("_mul", None)
        d.pop("_add", None)
        return d

    # ---------------------------------------------------------------- the work
    def resize_crop(self, img: Image.Image) -> np.ndarray:
        """Geometric part only: ``uint8 (crop_h, crop_w, 3)`` RGB array."""
        img = to_rgb(img)
        if self.size:
            w, h = img.size
            if self.squash:
                new_w = new_h = self.size
            elif w <= h:
                new_w, new_h = self.size, int(self.size * h / w)
            else:
                new_w, new_h = int(self.size * w / h), self.size
            if (new_w, new_h) != (w, h):
                img = img.resize((new_w, new_h), resample=self.resample)
        w, h = img.size
        top, left = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        if top >= 0 and left >= 0:
            # PIL's crop is cheaper than converting the whole resized image.
            return np.asarray(img.crop((left, top, left + self.crop_w, top + self.crop_h)))
        arr = np.asarray(img)
        # Smaller than the crop: zero-pad like transformers' center_crop (image at ceil(pad/2)).
        new_h, new_w = max(self.crop_h, h), max(self.crop_w, w)
        padded = np.zeros((new_h, new_w, 3), np.uint8)
        tp, lp = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
        padded[tp : tp + h, lp : lp + w] = arr
        top, left = top + tp, left + lp
        return padded[top : top + self.crop_h, left : left + self.crop_w]

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Preprocess one image.

        Args:
            img: a PIL image in any mode (converted to RGB, alpha on white).

        Returns:
            float32 C-contiguous array ``(3, crop_h, crop_w)``.
        """
        arr = self.resize_crop(img)
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
        chw *= self._mul
        chw += self._add
        return chw
