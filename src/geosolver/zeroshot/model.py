"""Zero-shot geolocation: compare a photo's CLIP embedding with text prompts naming places.

This is StreetCLIP's headline use (Haas et al., 2023): the photo embedding is scored against the
text embeddings of prompts such as ``"A Street View photo in Norway."``, one per place label, and
a softmax over ``logit_scale · cosine`` gives a probability per label. It needs no gallery, only
a CLIP model with a text tower.

The label sets (:mod:`geosolver.zeroshot.labels`) are the places prompts name; this module
holds the text embeddings and the model.

Text embeddings (:func:`text_embeddings`) are computed once per (text tower, level, prompts,
label keys, autocast dtype) and cached at ``geodata.cache_dir() / "text-embeddings" /
"{level}-{sha16}.npy"``, where the sha covers the encoder's ``text_fingerprint()`` (for a CLIP:
its text weights and vocabulary, :meth:`geosolver.encoders.clip.ClipEncoder.text_fingerprint`).
Only the encoder's text interface is used (``has_text``, ``embed_texts``, ``text_fingerprint``,
``logit_scale``; :class:`geosolver.encoders.Encoder`). A corrupt, wrongly shaped or non-finite cache file is recomputed
with a logged warning.

:class:`ZeroShot` turns an encoder and a level into probabilities and predictions; with
``hierarchical=True`` it first scores countries, then the regions or cities of the
``top_countries`` best countries: ``P(label) = P(country) · P(label | country)``, renormalised
over the kept countries.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from geosolver import geodata
from geosolver.errors import EncoderError, ZeroShotError
from geosolver.files import atomic_write_npy, jsonable
from geosolver.numeric import softmax_weights
from geosolver.progress import tqdm
from geosolver.zeroshot.labels import LEVELS, LabelSet, check_level, label_set, rows_by_key

log = logging.getLogger(__name__)

#: prompts per ``embed_texts`` call; a progress bar is shown above this many prompts.
TEXT_BATCH = 256


# ----------------------------------------------------------------------------- text embeddings
def _encoder_label(encoder) -> str:
    return f"{encoder.name!r} ({encoder.backend})"


def _no_text_tower(encoder, why: str | None = None) -> ZeroShotError:
    msg = f"zero-shot needs a CLIP model with a text tower; {_encoder_label(encoder)} has none"
    if why:
        msg += f" ({why.splitlines()[0] if why.strip() else why})"
    return ZeroShotError(msg)


def _text_fingerprint(encoder) -> str:
    """``encoder.text_fingerprint()``, its failure (e.g. no tokenizer) as one :class:`ZeroShotError` line."""
    try:
        return encoder.text_fingerprint()
    except EncoderError as err:
        raise _no_text_tower(encoder, str(err)) from None


def _cache_path(encoder, labels: LabelSet, prompts: Sequence[str]):
    h = hashlib.sha256()
    h.update(_text_fingerprint(encoder).encode())
    h.update(f"\0{labels.level}\0".encode())
    for k, p in zip(labels.keys.tolist(), prompts):
        h.update(f"{k}\t{p}\n".encode())
    return geodata.cache_dir() / "text-embeddings" / f"{labels.level}-{h.hexdigest()[:16]}.npy"


def _load_cached(path, shape: tuple[int, int]) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        log.warning("text-embedding cache %s is unreadable (%s); recomputing", path, e)
        return None
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.floating):
        log.warning("text-embedding cache %s has shape %s dtype %s, expected %s; recomputing", path, arr.shape, arr.dtype, shape)
        return None
    if not np.isfinite(arr).all() or (len(arr) and np.abs(np.linalg.norm(arr, axis=1) - 1.0).max() > 1e-3):
        log.warning("text-embedding cache %s holds non-finite or non-normalised rows; recomputing", path)
        return None
    return np.ascontiguousarray(arr, dtype=np.float32)


def text_embeddings(encoder, labels: LabelSet, template: str | None = None) -> np.ndarray:
    """Text embeddings of ``labels.prompts(template)``, computed once and cached on disk.

    Args:
        encoder: an :class:`~geosolver.encoders.Encoder` with a text tower (``has_text``).
        labels: the labels.
        template: see :meth:`LabelSet.prompts`.

    Returns:
        float32 ``(len(labels), encoder.dim)``, rows L2-normalised.

    Raises:
        ZeroShotError: a bad template, an encoder without a text tower, or non-finite embeddings.
    """
    prompts = labels.prompts(template)
    if not encoder.has_text:
        raise _no_text_tower(encoder)
    dim = int(encoder.dim)
    path = _cache_path(encoder, labels, prompts)
    cached = _load_cached(path, (len(prompts), dim))
    if cached is not None:
        return cached
    out = np.zeros((len(prompts), dim), np.float32)
    bar = None
    if len(prompts) > TEXT_BATCH:
        bar = tqdm(total=len(prompts), desc=f"text embeddings ({labels.level})", unit="prompt")
    try:
        for start in range(0, len(prompts), TEXT_BATCH):
            chunk = prompts[start : start + TEXT_BATCH]
            try:
                e = np.asarray(encoder.embed_texts(chunk), dtype=np.float32)
            except EncoderError as err:
                raise _no_text_tower(encoder, str(err)) from None
            if e.shape != (len(chunk), dim):
                raise ZeroShotError(f"{_encoder_label(encoder)}: embed_texts returned shape {e.shape}, expected {(len(chunk), dim)}")
            out[start : start + len(chunk)] = e
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    if not np.isfinite(out).all() or (norms <= 0).any():
        raise ZeroShotError(f"{_encoder_label(encoder)}: text embeddings are not finite (a broken text tower?)")
    out /= norms
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_npy(path, out)
    except OSError as e:
        log.warning("could not write text-embedding cache %s: %s", path, e)
    return out


# ----------------------------------------------------------------------------- predictions
@dataclass
class ZeroShotPrediction:
    """The zero-shot answer for one photo.

    Attributes:
        lat, lon: representative point of the top label (degrees).
        label: its key; name: its display name; cc: its country code.
        probability: its probability.
        level: the label level.
        top: the top-k labels, best first: ``{"key", "name", "cc", "probability", "lat", "lon"}``.
    """

    lat: float
    lon: float
    label: str
    name: str
    cc: str
    probability: float
    level: str
    top: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-safe dict of every field."""
        return jsonable(
            {
                "lat": self.lat, "lon": self.lon, "label": self.label, "name": self.name, "cc": self.cc,
                "probability": self.probability, "level": self.level, "top": self.top,
            }
        )


class ZeroShot:
    """Zero-shot geolocation with a CLIP encoder's text tower.

    Args:
        encoder: an encoder with a text tower (``encoder.has_text``, e.g. a CLIP).
        level: ``"countries"``, ``"regions"`` or ``"cities"``.
        template: a prompt template for ``level`` (default ``DEFAULT_TEMPLATES[level]``), or a
            mapping level → template (hierarchical mode takes the countries template from it).
        temperature: softmax temperature; ``None`` uses the model's own learned scale
            ``encoder.logit_scale`` (≈100 for trained CLIPs), else the scale is ``1/temperature``.
        hierarchical: score countries first, then the labels of the ``top_countries`` best
            countries (needs level regions or cities).
        top_countries: countries kept in hierarchical mode.
        min_population: cities level: see :func:`label_set`.
        labels: use this :class:`LabelSet` (of level ``level``) instead of :func:`label_set`'s,
            e.g. a :meth:`LabelSet.subset`.

    Raises:
        ZeroShotError: an encoder without a text tower (one line naming it), bad settings.
    """

    def __init__(
        self,
        encoder,
        level: str = "countries",
        template: str | Mapping[str, str] | None = None,
        temperature: float | None = None,
        hierarchical: bool = False,
        top_countries: int = 3,
        min_population: int | None = None,
        labels: LabelSet | None = None,
    ):
        check_level(level)
        if not encoder.has_text:
            raise _no_text_tower(encoder)
        if hierarchical and level == "countries":
            raise ZeroShotError("hierarchical zero-shot needs level regions or cities (it scores countries first)")
        if isinstance(top_countries, bool) or not isinstance(top_countries, (int, np.integer)) or top_countries < 1:
            raise ZeroShotError(f"top_countries must be an integer >= 1, got {top_countries!r}")
        if labels is None:
            labels = label_set(level, min_population)
        elif not isinstance(labels, LabelSet) or labels.level != level:
            raise ZeroShotError(f"labels must be a LabelSet of level {level}, got {labels!r}")
        if len(labels) == 0:
            why = f": no city has a population of at least {int(min_population):,} (lower --min-population)" if level == "cities" and min_population is not None else ""
            raise ZeroShotError(f"no labels at level {level}{why}")
        if isinstance(template, Mapping):
            unknown = set(template) - set(LEVELS)
            if unknown:
                raise ZeroShotError(f"template mapping has unknown levels {sorted(unknown)}; use {', '.join(LEVELS)}")
            templates = dict(template)
        else:
            templates = {level: template}
        self.encoder = encoder
        self.level = level
        self.template = templates.get(level)
        self.hierarchical = bool(hierarchical)
        self.top_countries = int(top_countries)
        self.labels = labels
        self.logit_scale = self._scale(encoder, temperature)
        self.text = text_embeddings(encoder, labels, self.template)
        self.dim = int(self.text.shape[1])
        if self.hierarchical:
            self.country_labels = label_set("countries")
            self.country_template = templates.get("countries")
            self.country_text = text_embeddings(encoder, self.country_labels, self.country_template)
            cidx = {cc: i for i, cc in enumerate(self.country_labels.cc.tolist())}
            missing = sorted({cc for cc in labels.cc.tolist() if cc not in cidx})
            if missing:
                raise ZeroShotError(f"labels of countries with no country label: {', '.join(missing[:5])}")
            self._fine_country = np.array([cidx[cc] for cc in labels.cc.tolist()], dtype=np.int64)
            self._country_groups = rows_by_key(self._fine_country)

    @staticmethod
    def _scale(encoder, temperature) -> float:
        if temperature is None:
            try:
                scale = float(encoder.logit_scale)
            except EncoderError as err:
                raise ZeroShotError(f"{_encoder_label(encoder)} has no logit scale ({err}); pass a temperature") from None
        else:
            try:
                t = float(temperature)
            except (TypeError, ValueError):
                raise ZeroShotError(f"temperature must be a number, got {temperature!r}") from None
            if not np.isfinite(t) or t <= 0:
                raise ZeroShotError(f"temperature must be finite and > 0, got {temperature!r}")
            scale = 1.0 / t
        if not np.isfinite(scale) or scale <= 0:
            raise ZeroShotError(f"logit scale {scale} is not usable; pass a temperature")
        return scale

    def _check(self, emb) -> np.ndarray:
        try:
            e = np.asarray(emb, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ZeroShotError(f"embeddings must be numeric: {err}") from None
        if e.ndim == 1:
            e = e[None, :]
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ZeroShotError(f"embeddings must have shape (n, {self.dim}) or ({self.dim},), got {np.shape(emb)}")
        if not np.isfinite(e).all():
            raise ZeroShotError("embeddings contain non-finite values")
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        if (norms <= 0).any():
            raise ZeroShotError("an embedding is all zeros")
        return e / norms

    def probs(self, emb) -> np.ndarray:
        """Label probabilities ``(n, len(labels))`` float64, rows summing to 1.

        ``emb``: ``(n, dim)`` or ``(dim,)`` image embeddings of the same encoder (rows are
        re-normalised). Flat: softmax of ``logit_scale · cos(photo, prompt)``. Hierarchical: the joint
        ``P(country) · P(label | country)`` over the ``top_countries`` most probable countries
        that have labels, renormalised over them; zero for labels of the other countries.
        """
        e = self._check(emb)
        logits = self.logit_scale * (e @ self.text.T.astype(np.float64))
        if not self.hierarchical:
            return softmax_weights(logits, 1.0)
        pc = softmax_weights(self.logit_scale * (e @ self.country_text.T.astype(np.float64)), 1.0)  # (n, C)
        has = np.zeros(pc.shape[1], bool)
        has[list(self._country_groups)] = True
        masked = np.where(has[None, :], pc, -1.0)
        k = min(self.top_countries, int(has.sum()))
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]  # (n, k)
        keep = np.zeros_like(pc, dtype=bool)
        np.put_along_axis(keep, top, True, axis=1)
        weight = np.where(keep, pc, 0.0)
        weight /= weight.sum(axis=1, keepdims=True)
        out = np.zeros_like(logits)
        for c, idx in self._country_groups.items():
            rows = np.flatnonzero(keep[:, c])
            if rows.size == 0:
                continue
            out[np.ix_(rows, idx)] = softmax_weights(logits[np.ix_(rows, idx)], 1.0) * weight[rows, c][:, None]
        return out

    def predict(self, emb, top: int = 5) -> list[ZeroShotPrediction]:
        """The best label of each photo with its representative point, and the ``top`` best labels."""
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise ZeroShotError(f"top must be an integer >= 1, got {top!r}")
        p = self.probs(emb)
        k = min(int(top), p.shape[1])
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        L = self.labels
        out = []
        for i in range(p.shape[0]):
            items = [
                {
                    "key": str(L.keys[j]), "name": str(L.names[j]), "cc": str(L.cc[j]),
                    "probability": float(p[i, j]), "lat": float(L.lat[j]), "lon": float(L.lon[j]),
                }
                for j in order[i]
            ]
            b = items[0]
            out.append(
                ZeroShotPrediction(
                    lat=b["lat"], lon=b["lon"], label=b["key"], name=b["name"], cc=b["cc"],
                    probability=b["probability"], level=self.level, top=items,
                )
            )
        return out

    def probs_by(self, emb, by: str = "cc") -> tuple[np.ndarray, np.ndarray]:
        """Probabilities summed per group.

        Args:
            emb: photo embeddings, as for :meth:`probs`.
            by: ``"cc"`` (country codes; at level regions/cities the sum of each country's
                labels) or ``"region"`` (``"CC/admin1"``; level regions or cities).

        Returns:
            ``(probs (n, G) float64, groups (G,) object array)``, groups sorted.
        """
        if by == "cc":
            g = self.labels.cc
        elif by == "region":
            if self.level == "countries":
                raise ZeroShotError("probs_by('region') needs level regions or cities")
            g = self.labels.cc + "/" + self.labels.region
        else:
            raise ZeroShotError(f"probs_by: unknown grouping {by!r}; use 'cc' or 'region'")
        p = self.probs(emb)
        groups, inv = np.unique(g.astype(str), return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(inv, minlength=len(groups)))[:-1]])
        summed = np.add.reduceat(p[:, order], starts, axis=1) if p.shape[0] else np.zeros((0, len(groups)))
        return summed, groups.astype(object)
