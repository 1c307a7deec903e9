"""The :class:`Encoder` interface every backend implements, device/precision resolution, and TTA.

An encoder turns images into L2-normalised float32 embeddings ``(n, dim)``. The expensive part is
split in two so the data pipeline can parallelise it:

* ``enc.preprocessor`` — a picklable ``PIL.Image -> np.ndarray float32 (3, S, S)`` callable with no
  model inside, run in ``DataLoader`` worker processes;
* ``enc.embed_pixels(pixels)`` — the model forward on a batch ``(n, 3, S, S)``, on ``enc.device``
  under ``torch.inference_mode`` and autocast to ``enc.dtype``.

Weights always stay in float32 (so ``enc.model`` can be fine-tuned as is); reduced precision comes
from autocast only.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from geosolver.errors import EncoderError
from geosolver.images import ImageSource, open_image
from geosolver.progress import tqdm


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; anything else as ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise EncoderError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but CUDA is not available")
    return dev


_PRECISIONS = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def resolve_dtype(precision: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Compute dtype for ``precision`` on ``device``.

    ``"auto"``: on CUDA bfloat16 if the GPU supports it, else float16; float32 on CPU.
    Explicit ``"fp32"``, ``"fp16"``, ``"bf16"`` are honoured (fp16/bf16 through autocast).
    """
    if isinstance(precision, torch.dtype):
        return precision
    p = str(precision or "auto").lower()
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if p not in _PRECISIONS:
        raise EncoderError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return _PRECISIONS[p]


def tta_views(pixels: torch.Tensor, tta: str | None) -> list[torch.Tensor]:
    """The test-time-augmentation views of a batch ``(n, 3, H, W)``.

    Args:
        pixels: preprocessed batch.
        tta: ``None``/``"none"`` → ``[pixels]``; ``"flip"`` → identity and horizontal flip;
            ``"d4"`` → the 8 symmetries of the square: rotations by 0/90/180/270 degrees
            (``torch.rot90`` over the spatial dims), each with and without a horizontal flip.

    Returns:
        list of tensors shaped like ``pixels`` (rotations need ``H == W``).
    """
    if tta in (None, "", "none"):
        return [pixels]
    if tta == "flip":
        return [pixels, pixels.flip(-1)]
    if tta == "d4":
        if pixels.shape[-1] != pixels.shape[-2]:
            raise EncoderError(f"tta='d4' needs square inputs, got {tuple(pixels.shape[-2:])}")
        views = []
        for k in range(4):
            r = torch.rot90(pixels, k, dims=(-2, -1))
            views += [r, r.flip(-1)]
        return views
    raise EncoderError(f"unknown tta {tta!r}; use None, 'flip' or 'd4'")


class Encoder:
    """Base class: an image encoder with a picklable preprocessor and a torch model.

    Subclasses set the attributes in ``__init__`` and implement :meth:`_forward` (pixels on the
    device → unnormalised embeddings) and :meth:`save`.

    Attributes:
        name: canonical name (hub id, backend name, or local directory path).
        revision: commit hash of the weights when known, else ``"local"`` / a backend tag.
        backend: ``"clip"``, ``"efficientnet-lite0"`` or ``"histogram"``.
        dim: embedding dimension.
        image_size: side of the square model input in pixels.
        min_side: shorter side an image needs before preprocessing (JPEG draft decoding bound).
        device: where the model runs.
        dtype: autocast dtype for inference (float32 on CPU by default).
        model: the trainable ``torch.nn.Module``.
        preprocessor: picklable ``PIL.Image -> np.ndarray float32 (3, image_size, image_size)``.
        spec: the :class:`~geosolver.encoders.EncoderSpec` that loads this encoder again (set by
            :func:`~geosolver.encoders.load_encoder`; ``None`` for one built by hand).
    """

    name: str
    revision: str
    backend: str
    dim: int
    image_size: int
    min_side: int
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module
    preprocessor: Callable[[Image.Image], np.ndarray]
    channels_last: bool = False
    spec: Any = None

    # ---------------------------------------------------------------- identity
    def identity(self) -> dict[str, Any]:
        """What identifies the embedding space: goes into store manifests.

        Returns:
            ``{"name", "revision", "dim", "preprocessing", "backend"}``.
        """
        describe = getattr(self.preprocessor, "describe", None)
        return {
            "name": self.name,
            "revision": self.revision,
            "dim": int(self.dim),
            "preprocessing": describe() if describe else repr(self.preprocessor),
            "backend": self.backend,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, image_size={self.image_size}, "
            f"device={self.device}, dtype={self.dtype})"
        )

    # ---------------------------------------------------------------- preprocessing
    def preprocess(self, img: Image.Image) -> np.ndarray:
        """``self.preprocessor(img)``: float32 ``(3, image_size, image_size)``."""
        return self.preprocessor(img)

    # ---------------------------------------------------------------- model
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Model forward: ``(n, 3, S, S)`` on ``self.device`` → unnormalised ``(n, dim)``."""
        raise NotImplementedError

    def _to_device(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(pixels, np.ndarray):
            pixels = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise EncoderError(f"{self.name}: expected pixels (n, 3, S, S), got shape {tuple(pixels.shape)}")
        pixels = pixels.to(self.device, dtype=torch.float32, non_blocking=True)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        return pixels

    def features(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Unnormalised embeddings ``(n, dim)`` WITH autograd, in the model's current mode.

        For fine-tuning: no ``inference_mode``, no autocast (wrap the call in your own autocast).
        """
        return self._forward(self._to_device(pixels))

    def embed_pixels(self, pixels: torch.Tensor | np.ndarray, tta: str | None = None) -> np.ndarray:
        """Embed a preprocessed batch.

        Args:
            pixels: ``(n, 3, S, S)`` float32 as produced by :attr:`preprocessor`.
            tta: ``None``, ``"flip"`` (2 views) or ``"d4"`` (8 views); the result is the mean of
                the L2-normalised view embeddings, re-normalised.

        Returns:
            float32 C-contiguous ``(n, dim)``, rows L2-normalised.
        """
        x = self._to_device(pixels)
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        was_training = self.model.training
        self.model.eval()
        use_autocast = self.dtype != torch.float32
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=use_autocast):
                acc = None
                for view in tta_views(x, tta):
                    if self.channels_last:
                        view = view.contiguous(memory_format=torch.channels_last)
                    e = torch.nn.functional.normalize(self._forward(view).float(), dim=-1)
                    acc = e if acc is None else acc + e
                out = torch.nn.functional.normalize(acc, dim=-1)
        finally:
            self.model.train(was_training)
        return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)

    def embed_images(
        self,
        images: Sequence[ImageSource],
        batch_size: int = 32,
        tta: str | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Decode, preprocess and embed images in this process (for small jobs; the ``embed``
        pipeline parallelises decoding for large ones).

        Args:
            images: paths, ``zip://ARCHIVE::MEMBER`` strings, encoded bytes or PIL images.
            batch_size: images per forward pass.
            tta: see :meth:`embed_pixels`.
            progress: show a tqdm progress bar.

        Returns:
            float32 ``(len(images), dim)``, rows L2-normalised.

        Raises:
            geosolver.images.ImageReadError: an image cannot be read (names the source).
        """
        if batch_size < 1:
            raise EncoderError(f"batch_size must be >= 1, got {batch_size}")
        images = list(images)
        out = np.zeros((len(images), self.dim), np.float32)
        bar = None
        if progress:
            bar = tqdm(total=len(images), desc=f"embed {os.path.basename(str(self.name))}", unit="img")
        try:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                pixels = np.stack([self.preprocessor(open_image(src, min_side=self.min_side)) for src in chunk])
                out[start : start + len(chunk)] = self.embed_pixels(pixels, tta=tta)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return out

    # ---------------------------------------------------------------- text tower (optional)
    #: whether this encoder has a text tower embedding prompts into its image space (a CLIP).
    #: Backends that set it implement :meth:`embed_texts`, :meth:`text_fingerprint` and
    #: :attr:`logit_scale`; on the others the three raise :class:`EncoderError` naming the encoder.
    has_text: bool = False

    def _no_text(self) -> EncoderError:
        return EncoderError(f"encoder {self.name!r} ({self.backend}) has no text tower")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings of ``texts`` in the image space.

        Returns:
            float32 ``(len(texts), dim)``, rows L2-normalised (comparable with :meth:`embed_pixels`).

        Raises:
            EncoderError: the encoder has no (usable) text tower.
        """
        raise self._no_text()

    def text_fingerprint(self) -> str:
        """A hex digest that changes whenever :meth:`embed_texts` could return something else
        (text weights, vocabulary, autocast dtype): the key of text-embedding caches.

        Raises:
            EncoderError: the encoder has no (usable) text tower.
        """
        raise self._no_text()

    @property
    def logit_scale(self) -> float:
        """The model's own learned scale of image–text cosines (``exp`` of CLIP's ``logit_scale``,
        ≈100 for trained CLIPs).

        Raises:
            EncoderError: the encoder has no text tower.
        """
        raise self._no_text()

    def save(self, path: str | os.PathLike) -> None:
        """Save so that ``load_encoder(path)`` reloads the same encoder."""
        raise NotImplementedError
