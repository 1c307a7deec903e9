"""Image encoders: ``load_encoder(name_or_path)`` → an :class:`Encoder`.

Names understood by :func:`load_encoder`:

* an alias from :data:`ENCODER_ALIASES` (``streetclip`` — the default —, ``clip-vit-l-14-336``,
  ``clip-vit-l-14``, ``clip-vit-b-32``, ``efficientnet-lite0``, ``efficientnet-lite2``, ``histogram``);
  ``efficientnet-lite0@S`` / ``efficientnet-lite2@S`` runs the network at a native input side of S px
  instead of its ImageNet recipe (Lite0 256→224, Lite2 292→260);
* a local directory: a ``transformers`` ``save_pretrained`` CLIP directory, or one written by
  ``Encoder.save`` of an offline backend (holds ``geosolver_encoder.json``);
* any Hugging Face hub id of a CLIP model (``org/name``).

Example::

    from geosolver.encoders import load_encoder
    enc = load_encoder("streetclip")             # cuda + bf16/fp16 autocast when available
    emb = enc.embed_images(["a.jpg", "b.jpg"])   # (2, 768) float32, unit rows
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from geosolver.encoders.names import _KNOWN_NAMES, DEFAULT_ENCODER, ENCODER_ALIASES, MODEL_HELP, PRECISIONS, TTA_MODES
from geosolver.errors import EncoderError

if TYPE_CHECKING:
    import torch

    from geosolver.encoders.base import Encoder

#: names served from :mod:`geosolver.encoders.base` on first use (it imports torch).
_FROM_BASE = ("Encoder", "resolve_device", "resolve_dtype", "tta_views")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from geosolver.encoders import base  # torch: base imports it; this package stays torch-free at import

        return getattr(base, name)
    if name == "ResizeCropNormalize":
        from geosolver.encoders.preprocess import ResizeCropNormalize  # numpy + PIL: not for the CLI's parsers, which import this package

        return ResizeCropNormalize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_ENCODER",
    "MODEL_HELP",
    "PRECISIONS",
    "EncoderSpec",
    "ENCODER_ALIASES",
    "TTA_MODES",
    "Encoder",
    "EncoderError",
    "ResizeCropNormalize",
    "TEXT_BACKENDS",
    "has_text_tower",
    "load_encoder",
    "resolve_device",
    "resolve_dtype",
    "tta_views",
]


#: backends whose encoders have a text tower (:attr:`Encoder.has_text`).
TEXT_BACKENDS = ("clip",)


def has_text_tower(identity: Mapping[str, Any]) -> bool:
    """Whether the encoder that ``identity`` describes (:meth:`Encoder.identity`, e.g. a store
    manifest's ``encoder``) has a text tower — without loading it. A loaded encoder says
    :attr:`Encoder.has_text`."""
    return identity.get("backend") in TEXT_BACKENDS


@dataclass(frozen=True)
class EncoderSpec:
    """A picklable description of an encoder to load: what Ray actors, torchrun ranks,
    :meth:`geosolver.locate.Geolocator.from_store` and the web app receive instead of a model.

    Attributes:
        name: alias, local directory or hub id (see :func:`load_encoder`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        precision: one of :data:`PRECISIONS`.
    """

    name: str = DEFAULT_ENCODER
    device: str = "auto"
    precision: str = "auto"

    def load(self) -> Encoder:
        """Load the encoder (:func:`load_encoder`)."""
        return load_encoder(self)

    def on(self, device: str | None = None, precision: str | None = None) -> "EncoderSpec":
        """The same encoder on another device and/or precision (``None`` keeps the current one)."""
        return replace(self, device=self.device if device is None else str(device),
                       precision=self.precision if precision is None else str(precision))


def load_encoder(
    name_or_path: str | os.PathLike | EncoderSpec = DEFAULT_ENCODER,
    device: str | torch.device = "auto",
    precision: str | torch.dtype = "auto",
) -> Encoder:
    """Load an encoder by alias, local directory or hub id.

    The returned encoder's ``spec`` is the :class:`EncoderSpec` that loads it again (on the
    device and at the precision it resolved to).

    Args:
        name_or_path: see the module docstring, or an :class:`EncoderSpec` (whose device and
            precision then win over the two arguments). Resolution order: alias, existing local
            path, hub id (``org/name``).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        precision: ``"auto"`` (bf16 if supported else fp16 on CUDA, fp32 on CPU), ``"fp32"``,
            ``"fp16"``, ``"bf16"``. Weights stay float32; this is the inference autocast dtype.

    Returns:
        the :class:`Encoder`.

    Raises:
        EncoderError: the name resolves to nothing loadable; the message lists what was tried
            (alias resolution, local path, hub id) and the underlying error.
    """
    import torch  # torch: optional heavy backend

    from geosolver.encoders.base import resolve_device, resolve_dtype  # torch, as above

    if isinstance(name_or_path, EncoderSpec):
        name_or_path, device, precision = name_or_path.name, name_or_path.device, name_or_path.precision
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    key = os.fspath(name_or_path).strip()
    if not key:
        raise EncoderError("empty encoder name")
    enc = _load(key, dev, dtype)
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    enc.spec = EncoderSpec(key, str(dev), names.get(dtype, "auto"))
    return enc


def _load(key: str, dev: torch.device, dtype: torch.dtype) -> Encoder:
    """Resolve ``key`` (alias, local directory, hub id) and construct the backend."""
    from geosolver.encoders import clip, offline  # the torch backends, loaded with the first encoder

    tried: list[str] = []

    alias = ENCODER_ALIASES.get(key.lower())
    if alias in offline.EFFNET_VARIANTS:
        return offline.EfficientNetLiteEncoder(dev, dtype, variant=alias)
    variant, at, size = key.lower().partition("@")
    if at and variant in offline.EFFNET_VARIANTS:  # e.g. efficientnet-lite0@64: native input size
        if not size.isdigit():
            raise EncoderError(f"encoder {key!r}: expected {variant}@<input side in px>, e.g. @64")
        return offline.EfficientNetLiteEncoder(dev, dtype, input_size=int(size), variant=variant)
    if alias == offline.HISTOGRAM_NAME:
        return offline.HistogramEncoder(dev, dtype)

    if alias is not None:
        tried.append(f"alias {key!r} -> {alias!r}")
        target = alias
    else:
        path = Path(key).expanduser()
        if path.exists():
            if not path.is_dir():
                raise EncoderError(f"encoder {key!r}: {path} is a file; expected a model directory")
            if (path / offline.SAVED_CONFIG).is_file():
                return offline.load_saved(path, dev, dtype)
            if not (path / "config.json").is_file():
                raise EncoderError(
                    f"encoder {key!r}: directory {path} holds neither config.json (a transformers "
                    f"save_pretrained CLIP) nor {offline.SAVED_CONFIG} (a saved offline encoder)"
                )
            clip.check_clip_dir(path)
            try:
                return clip.ClipEncoder(str(path), name=str(path), device=dev, dtype=dtype)
            except EncoderError:
                raise
            except Exception as e:  # noqa: BLE001 — surface any loader failure as one clear line
                raise EncoderError(f"encoder {key!r}: cannot load CLIP from {path}: {clip.one_line(e)}") from None
        tried.append(f"local path {str(path.absolute())!r} (does not exist)")
        looks_like_hub_id = key.count("/") == 1 and not key.startswith((".", "/", "~")) and "\\" not in key
        if not looks_like_hub_id:
            raise EncoderError(
                f"unknown encoder {key!r}: tried {'; '.join(tried)}; not an alias "
                f"({_KNOWN_NAMES}) and not a hub id of the form org/name"
            )
        target = key

    tried.append(f"hub id {target!r}")
    return clip.load_from_hub(key, target, tried, dev, dtype)
