"""Hugging Face ``transformers`` CLIP backend (StreetCLIP, OpenAI CLIP, local ``save_pretrained`` dirs)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from geosolver.encoders.base import Encoder, EncoderError
from geosolver.encoders.preprocess import ResizeCropNormalize
import urllib.error
import urllib.request

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


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (loader errors from transformers / huggingface_hub span
    many lines; the CLI prints one)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


#: seconds the one reachability request to the hub may take.
HUB_PROBE_TIMEOUT_S = 5.0


def probe_hub(repo: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """One short request to the Hugging Face hub (``HEAD {ENDPOINT}/api/models/{repo}``, no retries).

    Returns:
        ``None`` if the hub answered (any HTTP status: a 404 or 401 is the hub's answer, which
        ``from_pretrained`` then reports), else why it could not be reached.
    """
    from huggingface_hub import constants  # huggingface_hub: ~0.3 s, only when the hub is used

    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{repo}"
    result: list[str | None] = []

    def ask() -> None:
        req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "geosolver"})
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                result.append(None)
        except urllib.error.HTTPError:
            result.append(None)
        except urllib.error.URLError as e:
            reason = e.reason
            result.append(f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason))
        except Exception as e:  # noqa: BLE001 — timeouts, resets, a malformed HF_ENDPOINT
            result.append(f"{type(e).__name__}: {e}")

    # a thread bounds the name lookup too, which the socket timeout does not cover
    t = threading.Thread(target=ask, daemon=True, name="geosolver-hub-probe")
    t.start()
    t.join(timeout + 1.0)
    if not result:
        return f"no answer within {timeout:g} s"
    return result[0]


@contextlib.contextmanager
def _quiet_hub():
    """Silence huggingface_hub's per-retry warnings while loading (an error is reported once, by us)."""
    hub_log = logging.getLogger("huggingface_hub")
    before = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(before)


def load_from_hub(key: str, repo: str, tried: list[str], device: torch.device, dtype: torch.dtype) -> "ClipEncoder":
    """Load the CLIP hub model ``repo`` (what ``key`` resolved to), failing fast and in one line.

    * in the local hub cache and the hub unreachable (or ``HF_HUB_OFFLINE``): loaded from the
      cache alone;
    * not cached and ``HF_HUB_OFFLINE`` set: an error saying so;
    * not cached and the hub unreachable (one short probe, no retries): an error naming the model,
      the endpoint, and the ways to work offline;
    * the hub answers: ``from_pretrained`` downloads (its errors, e.g. an unknown repo, shortened
      to one line).

    Raises:
        EncoderError: as above; the message starts with ``cannot load encoder KEY: tried ...``.
    """
    from huggingface_hub import constants, try_to_load_from_cache  # huggingface_hub: ~0.3 s, only when the hub is used

    head = f"cannot load encoder {key!r}: tried {'; '.join(tried)}"
    try:
        cached = isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 — an unusable cache is a missing one
        cached = False
    cache_dir = constants.HF_HUB_CACHE
    offline_fix = (
        f"download it where the hub is reachable (`geosolver download model {repo} --local-dir DIR`), copy DIR here "
        f"and run with HF_HUB_OFFLINE=1 --model DIR; for kNN only, an offline encoder needs no download: histogram, "
        f"efficientnet-lite0@S (EfficientNet-Lite0 at S px, e.g. efficientnet-lite0@224) — they have no text tower, "
        f"so no zero-shot or text prior"
    )
    local_only = constants.is_offline_mode()
    if local_only and not cached:
        raise EncoderError(f"{head}: not in the local cache {cache_dir} and HF_HUB_OFFLINE is set; {offline_fix}")
    if not local_only:
        unreachable = probe_hub(repo)
        if unreachable is not None:
            if not cached:
                raise EncoderError(
                    f"{head}: the Hugging Face hub {constants.ENDPOINT} is unreachable ({unreachable}) and the model is "
                    f"not in the local cache {cache_dir}; {offline_fix}"
                )
            log.info("%s: the hub %s is unreachable (%s); loading the cached copy", repo, constants.ENDPOINT, unreachable)
            local_only = True
    try:
        with _quiet_hub():
            return ClipEncoder(repo, name=repo, device=device, dtype=dtype, local_files_only=local_only)
    except EncoderError:
        raise
    except Exception as e:  # noqa: BLE001 — surface any loader failure as one clear line
        raise EncoderError(f"{head}: {one_line(e)}") from None


def cached_snapshot(repo: str) -> Path | None:
    """The cached snapshot folder ``from_pretrained(repo)`` loads (the one ``refs/main`` names), or
    ``None`` for a local directory or an uncached id."""
    from huggingface_hub import try_to_load_from_cache  # huggingface_hub: ~0.3 s, only when the hub is used

    if Path(repo).expanduser().exists():
        return None
    try:
        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # noqa: BLE001 — not a hub id, or an unusable cache
        return None
    snapshot = Path(found).parent if isinstance(found, str) else None
    return snapshot if snapshot is not None and snapshot.parent.name == "snapshots" else None


def cached_commit(repo: str) -> str | None:
    """The commit of the cached snapshot ``from_pretrained(repo)`` loads: transformers 5 no longer
    records it on the config. ``None`` for a local directory or an uncached id."""
    snapshot = cached_snapshot(repo)
    return snapshot.name if snapshot is not None else None


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
        local_files_only: read ``source`` from the local hub cache only (no network).
    """

    backend = "clip"
    has_text = True

    def __init__(self, source: str, name: str, device: torch.device, dtype: torch.dtype, local_files_only: bool = False):
        from transformers import CLIPModel  # transformers: heavy (~0.8 s), only when a CLIP is loaded

        self._local_files_only = bool(local_files_only)
        model = CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=self._local_files_only)
        self.model = model.to(device).eval()
        self.name = name
        self.device = device
        self.dtype = dtype
        self.dim = int(model.config.projection_dim)
        commit = getattr(model.config, "_commit_hash", None) or cached_commit(source)
        self.revision = str(commit) if commit else "local"
        self.image_processor = self._load_image_processor(source, int(model.config.vision_config.image_size), self._local_files_only)
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
    def _load_image_processor(source: str, image_size: int, local_files_only: bool = False) -> Any:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # transformers: heavy (~0.8 s), only when a CLIP is loaded

        try:
            return CLIPImageProcessorPil.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as e:
            log.warning("%s: no usable preprocessor_config.json (%s); using CLIP defaults at %d px", source, e, image_size)
            return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _load_tokenizer(self, auto: Any) -> Any:
        """From the cached snapshot the model was loaded from when it holds the tokenizer's files (no
        request to the hub), else from ``source`` as given."""
        snapshot = cached_snapshot(self._source)
        if snapshot is not None and any((snapshot / f).exists() for f in ("tokenizer.json", "vocab.json")):
            return auto.from_pretrained(str(snapshot), local_files_only=True)
        return auto.from_pretrained(self._source, local_files_only=self._local_files_only)

    @property
    def tokenizer(self) -> Any:
        """The CLIP tokenizer saved with the model (loaded on first use)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer  # transformers: heavy (~0.8 s), only when a CLIP is loaded

            try:
                with _quiet_hub():
                    self._tokenizer = self._load_tokenizer(AutoTokenizer)
            except Exception as e:  # noqa: BLE001 — any failure means: no tokenizer
                raise EncoderError(f"{self.name}: no tokenizer could be loaded ({type(e).__name__}: {e})") from None
            # without its vocabulary files, transformers builds a tokenizer that knows only its special tokens:
            # every prompt becomes the same string of unknown tokens (silently useless text embeddings)
            if len(self._tokenizer.get_vocab()) <= len(set(self._tokenizer.all_special_tokens)):
                self._tokenizer = None
                raise EncoderError(f"{self.name}: no tokenizer could be loaded (its vocabulary files, e.g. tokenizer.json "
                                   "or vocab.json + merges.txt, are missing from the model)")
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

    def text_fingerprint(self) -> str:
        """sha256 of the text tower's weights — full bytes of ``text_projection`` and the token
        embedding; name, shape, sum, sum of squares and a strided sample of every other text
        parameter —, of the autocast dtype and dimension, and of the tokenizer's vocabulary.

        Raises:
            EncoderError: no tokenizer could be loaded.
        """
        h = hashlib.sha256()
        full = {"text_projection.weight", "text_model.embeddings.token_embedding.weight"}
        params = [("text_projection." + n, t) for n, t in self.model.text_projection.named_parameters()]
        params += [("text_model." + n, t) for n, t in self.model.text_model.named_parameters()]
        with torch.no_grad():
            for name, t in params:
                h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
                if name in full:
                    h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
                    continue
                flat = t.detach().reshape(-1).double()
                stats = torch.stack([flat.sum(), (flat * flat).sum()]).cpu().numpy()
                step = max(1, flat.numel() // 1024)
                h.update(stats.tobytes())
                h.update(flat[::step].float().cpu().numpy().tobytes())
        h.update(f"|dtype={self.dtype}|dim={self.dim}".encode())
        # same weights, another vocabulary: other text embeddings
        h.update(json.dumps(sorted(self.tokenizer.get_vocab().items()), ensure_ascii=False).encode())
        return h.hexdigest()

    @property
    def logit_scale(self) -> float:
        """``exp(model.logit_scale)``: CLIP's learned scale of image–text cosines."""
        return float(np.exp(float(self.model.logit_scale.detach().float().cpu().reshape(-1)[0])))

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
