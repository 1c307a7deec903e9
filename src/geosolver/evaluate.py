"""Evaluate retrieval geolocation on a query store against a gallery store.

Every query is located from its **stored** embedding (nothing is re-embedded). One kNN search
with the largest ``k`` serves every (strategy, k) combination. For each combination we report:
mean Geoscore (``5000·exp(-km/1492.7)``) with a 95 % bootstrap interval (queries resampled with
replacement, 1000 times, fixed seed), median and mean error in km, accuracy within
1 / 25 / 200 / 750 / 2500 km, and country accuracy.

Two references are always reported beside the model:

* ``random``: the guess is the location of a uniformly random gallery image (so it follows
  the gallery's geographic distribution — a stronger baseline than uniform on land when the
  gallery is clustered in a few countries);
* ``oracle``: the guess is the gallery coordinate nearest to the true location — the upper
  bound of any method that answers with a gallery location (``nn``), and close to the bound of
  the averaging strategies.

Country of a query: its ``country`` metadata column when present (ISO alpha-2, compared
case-insensitively), else reverse geocoding of the true coordinates; the predicted country is
the reverse geocode of the guess (:func:`geosolver.places.country_of`).

``nn`` does not depend on ``k``: it is reported once, with ``k = 1``. The other strategies at
``k = 1`` equal ``nn`` and are skipped when ``nn`` is also evaluated.

**Sweeps.** ``temperature`` and ``radius_km`` may be lists: every combination that changes the
guess is voted from the same neighbours (``weighted-mean`` per temperature, ``densest`` per
temperature × radius, ``nn`` once) and reported as its own row, the best one marked
(``is_best``). A setting that does not change a row's guess is ``None`` in that row (``null``
in ``metrics.json``, ``NaN`` in ``predictions.parquet``).

**Text prior and zero-shot.** With a CLIP gallery (a text tower), ``priors=("none", "text")``
votes every setting twice: plainly and with each neighbour's vote multiplied by the zero-shot
probability of its country (:mod:`geosolver.prior`; ``prior_weight`` λ may be a list, swept like
the temperature), and ``zero_shot="countries"`` (or ``regions`` / ``cities``) adds the row of the
text model alone (strategy ``zero-shot-LEVEL``, the representative point of its best place). So kNN
vs zero-shot vs fused come out of one run, from the stored query embeddings.

**Location heads.** ``head=DIR`` (a head trained by ``geosolver head train``,
:mod:`geosolver.heads`) adds the head's own row (strategy ``head-cells`` / ``head-flow``) and,
per setting, the vote fused with the head (prior ``head``, each neighbour's vote times the head's
probability of its place to the power λ, ``head_weight`` swept like the text prior's) — and for
a cells head the kNN vote refined inside its ``refine_top`` most probable cells (prior
``refine``). ``fuse`` picks which of the plain (``none``) and fused (``head``) votes are rows.

**Queries inside the gallery.** A query whose ``id`` is also in the gallery can retrieve itself,
which inflates every score (``nn`` is a perfect 5000). :func:`evaluate` counts such queries and
records them in ``self_overlap``; when leave-one-out is off it warns (an :class:`EvaluateWarning`,
also kept in ``warnings`` and written to ``metrics.json`` / ``metrics.md``; the CLI prints it on
stderr). ``exclude_self="auto"`` (the CLI's default) turns leave-one-out
on when queries and gallery are the same store (same path, or the same set of ids). A perfect
score is never reported silently: it also warns when no id is shared (copies under other ids).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings as _warnings_module
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from geosolver.progress import tqdm

from geosolver.errors import EvaluateError
from geosolver.files import version
from geosolver.geo import ACCURACY_THRESHOLDS_KM, distance_metrics, geoscore, haversine, latlon_to_xyz
from geosolver.index import KINDS
from geosolver.locate import DEFAULT_RADIUS_KM, DEFAULT_TEMPERATURE, STRATEGIES, Geolocator, Neighbours
from geosolver.places import country_of
from geosolver.prior import DEFAULT_PRIOR_WEIGHT, PRIOR_BY, PRIORS, prior_factors
from geosolver.rundir import RunDir
from geosolver.store import EmbeddingStore, encoder_compatible
from geosolver.zeroshot import LEVELS, ZeroShot

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 5, 10, 50)
#: the votes a location head adds: the plain one and/or the one fused with the head
FUSE = ("none", "head")
REFERENCES = ("random", "oracle")


class EvaluateWarning(UserWarning):
    """An evaluation whose numbers mislead: queries that can retrieve themselves, a perfect score."""


#: a mean Geoscore at least this high is "perfect" (mean error below ~0.15 km): always warned about
PERFECT_GEOSCORE = 4999.5
METRIC_COLUMNS = ["geoscore", "geoscore_ci95", "median_km", "mean_km"] + [f"acc@{t:g}km" for t in ACCURACY_THRESHOLDS_KM] + ["country_acc"]
OUTPUT_FILES = ("metrics.json", "metrics.md", "predictions.parquet", "config.json", "errors_map.png", "errors_hist.png")


# ----------------------------------------------------------------------------------------------
# statistics and references
# ----------------------------------------------------------------------------------------------
def bootstrap_ci(values: np.ndarray, reps: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    Returns:
        ``(low, high)`` bounds of the central ``level`` interval.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0 or reps < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(reps)
    chunk = max(1, int(2e7 // v.size))
    for s in range(0, reps, chunk):
        r = min(chunk, reps - s)
        means[s : s + r] = v[rng.integers(0, v.size, size=(r, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return float(lo), float(hi)


def oracle_guess(
    gal_lat: np.ndarray, gal_lon: np.ndarray, lat: np.ndarray, lon: np.ndarray, exclude_rows: Sequence[Sequence[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each true point ``(lat, lon)`` (degrees), the nearest gallery coordinate (skipping
    ``exclude_rows[i]`` for point ``i``)."""
    from scipy.spatial import cKDTree  # scipy's spatial module costs ~0.2 s: loaded by the oracle only

    tree = cKDTree(latlon_to_xyz(gal_lat, gal_lon))
    extra = max((len(e) for e in exclude_rows), default=0) if exclude_rows is not None else 0
    kq = min(len(gal_lat), 1 + extra)
    _, idx = tree.query(latlon_to_xyz(lat, lon), k=kq)
    idx = np.asarray(idx).reshape(len(lat), kq)
    pick = idx[:, 0].copy()
    if extra:
        for i, e in enumerate(exclude_rows):
            if len(e):
                ok = [j for j in idx[i] if j not in set(e)]
                pick[i] = ok[0] if ok else idx[i, 0]
    return gal_lat[pick], gal_lon[pick]


def random_guess(
    gal_lat: np.ndarray, gal_lon: np.ndarray, n: int, seed: int = 0, exclude_rows: Sequence[Sequence[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` guesses, each the location of a uniformly random gallery row (never an excluded one)."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(gal_lat), size=n)
    if exclude_rows is not None:
        for i, e in enumerate(exclude_rows):
            if len(e) and len(e) < len(gal_lat):
                while pick[i] in e:
                    pick[i] = rng.integers(0, len(gal_lat))
    return gal_lat[pick], gal_lon[pick]


def _norm_cc(a) -> np.ndarray:
    return np.array([("" if x is None or pd.isna(x) else str(x)).strip().upper() for x in a], dtype=object)


def true_countries(queries: EmbeddingStore) -> np.ndarray:
    """Country code of each query: the ``country`` column where set, else reverse geocoding."""
    meta = queries.metadata
    lat, lon = queries.coords()
    cc = _norm_cc(meta["country"]) if "country" in meta.columns else np.full(len(meta), "", dtype=object)
    missing = cc == ""
    if missing.any():
        cc[missing] = _norm_cc(country_of(lat[missing], lon[missing]))
    return cc


def score(true_lat, true_lon, pred_lat, pred_lon, true_cc: np.ndarray | None = None, bootstrap: int = 1000, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of guesses against the truth (all degrees).

    Returns:
        ``(metrics, km (n,), pred_cc (n,))``: metrics has ``n``, ``geoscore`` (mean),
        ``geoscore_ci95`` ([low, high]), ``median_km``, ``mean_km``, ``acc@<t>km`` and
        ``country_acc`` (share of queries with a known country whose guess is in it).
    """
    km = haversine(true_lat, true_lon, pred_lat, pred_lon, check=False)
    m = distance_metrics(km)
    m["geoscore_ci95"] = list(bootstrap_ci(geoscore(km), bootstrap, seed))
    pred_cc = _norm_cc(country_of(pred_lat, pred_lon))
    if true_cc is not None:
        known = true_cc != ""
        m["country_acc"] = float(np.mean(pred_cc[known] == true_cc[known])) if known.any() else float("nan")
    return m, km, pred_cc


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def combos(strategies: Sequence[str], ks: Sequence[int]) -> list[tuple[str, int]]:
    """The (strategy, k) pairs evaluated (``nn`` once at k=1; k=1 of others skipped when nn runs)."""
    for s in strategies:
        if s not in STRATEGIES:
            raise EvaluateError(f"unknown strategy {s!r}; choose from {', '.join(STRATEGIES)}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise EvaluateError(f"k values must be >= 1, got {ks}")
    out: list[tuple[str, int]] = []
    for s in strategies:
        if s == "nn":
            out.append(("nn", 1))
        else:
            out.extend((s, k) for k in ks if not (k == 1 and "nn" in strategies))
    return out


def positive_values(name: str, values: float | Sequence[float], allow_zero: bool = False) -> list[float]:
    """``values`` (one number or several) as a list of distinct floats, in the given order.

    Raises:
        EvaluateError: an empty list, or a value that is not a finite number > 0 (``>= 0`` with
        ``allow_zero``).
    """
    rule = f"a finite number {'>=' if allow_zero else '>'} 0"
    vals = [values] if isinstance(values, (int, float, np.number)) else list(values)
    if not vals:
        raise EvaluateError(f"{name}: expected at least one value")
    out: list[float] = []
    for v in vals:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise EvaluateError(f"{name} must be {rule}, got {v!r}") from None
        if not math.isfinite(f) or f < 0 or (f == 0 and not allow_zero):
            raise EvaluateError(f"{name} must be {rule}, got {v!r}")
        if f not in out:
            out.append(f)
    return out


def settings_grid(
    strategies: Sequence[str], ks: Sequence[int], temperatures: Sequence[float], radii_km: Sequence[float]
) -> list[tuple[str, int, float | None, float | None]]:
    """Every ``(strategy, k, temperature, radius_km)`` voted, ``(strategy, k)`` as :func:`combos`.

    Only settings that change the guess vary: ``nn`` neither (``None`` for both),
    ``weighted-mean`` the temperature (radius ``None``), ``densest`` both."""
    out: list[tuple[str, int, float | None, float | None]] = []
    for s, k in combos(strategies, ks):
        if s == "nn":
            out.append((s, k, None, None))
        elif s == "weighted-mean":
            out.extend((s, k, t, None) for t in temperatures)
        else:
            out.extend((s, k, t, r) for t in temperatures for r in radii_km)
    return out


def vote_setting(
    nb: Neighbours, strategy: str, k: int, temperature: float | None, radius_km: float | None, default_t: float, default_r: float,
    prior: np.ndarray | None = None,
):
    """``nb.vote`` for one grid setting (a ``None`` setting, unused by the strategy, takes the default)."""
    t = default_t if temperature is None else temperature
    r = default_r if radius_km is None else radius_km
    return nb.vote(strategy, k, t, r, prior=prior)


def _check_priors(priors: Sequence[str] | str) -> list[str]:
    out = [priors] if isinstance(priors, str) else list(priors)
    if not out:
        raise EvaluateError("priors: expected at least one of " + ", ".join(PRIORS))
    for p in out:
        if p not in PRIORS:
            raise EvaluateError(f"unknown prior {p!r}; use one of {', '.join(PRIORS)}")
    return list(dict.fromkeys(out))


def _check_fuse(fuse: Sequence[str] | str, head: Any) -> list[str]:
    out = [fuse] if isinstance(fuse, str) else list(dict.fromkeys(fuse))
    if not out or any(f not in FUSE for f in out):
        raise EvaluateError(f"fuse must be one or both of {', '.join(FUSE)}, got {fuse!r}")
    return out if head is not None else []


def _open_head(head: Any, gs: EmbeddingStore):
    """The location head (loaded from its directory if a path), checked against the gallery."""
    if head is None:
        return None
    if isinstance(head, (str, os.PathLike)):
        from geosolver.heads.train import load_head  # torch: loaded only when a head is evaluated

        head = load_head(head)
    head.check_store(gs)
    return head


def _head_probs(head, qs: EmbeddingStore, nb: Neighbours, batch_size: int) -> np.ndarray:
    """``(n, k)`` the head's probability of every query's neighbours' places."""
    out = []
    for off, emb in qs.iter_batches(batch_size):
        rows = slice(off, off + len(emb))
        out.append(head.probabilities(emb, nb.lat[rows], nb.lon[rows]))
    return np.concatenate(out)


def _text_model(
    geo: Geolocator, qs: EmbeddingStore, nb: Neighbours, with_prior: bool, prior_by: str, zero_shot: str | None,
    temperature: float | None, prompt: str | None, batch_size: int, progress: bool,
) -> dict:
    """What the text tower says about every query: the neighbours' prior probabilities
    (``nb_probs``, ``(n, k)``) and the zero-shot guesses; ``{}``-like when neither is asked for."""
    out: dict[str, Any] = {"describe": None}
    if not with_prior and zero_shot is None:
        return out
    prior = geo.text_prior(by=prior_by, temperature=temperature, template=prompt) if with_prior else None
    zs = None
    if zero_shot is not None:  # the prior's own model when it is the same one (no second set of text embeddings)
        same = prior is not None and prior.zeroshot.level == zero_shot
        zs = prior.zeroshot if same else ZeroShot(geo.encoder, level=zero_shot, template=prompt, temperature=temperature)
    nb_probs, zlat, zlon, zconf = [], [], [], []
    with tqdm(total=len(qs), desc="text", unit="q", disable=not progress, leave=False) as bar:
        for off, emb in qs.iter_batches(batch_size):
            if prior is not None:
                rows = slice(off, off + len(emb))
                nb_probs.append(prior.probabilities(emb, nb.lat[rows], nb.lon[rows]))
            if zs is not None:
                for p in zs.predict(emb, top=1):
                    zlat.append(p.lat), zlon.append(p.lon), zconf.append(p.probability)
            bar.update(len(emb))
    out["describe"] = {"prior": prior.describe() if prior else None, "zero_shot": zero_shot, "prompt": prompt}
    if prior is not None:
        out["prior"], out["nb_probs"] = prior, np.concatenate(nb_probs)
    if zs is not None:
        out["zero_shot"] = (np.asarray(zlat), np.asarray(zlon), np.asarray(zconf))
    return out


def self_overlap(qs: EmbeddingStore, gs: EmbeddingStore) -> dict:
    """How many queries share an ``id`` with a gallery row; whether the two are the same store.

    Returns:
        ``{"queries_in_gallery", "n_queries", "same_store" (same path), "same_ids" (the same
        set of ids)}``.
    """
    q_ids = qs.metadata["id"].astype(str)
    g_ids = gs.metadata["id"].astype(str)
    inside = int(q_ids.isin(g_ids.to_numpy()).sum())
    same_store = qs.path.resolve() == gs.path.resolve()
    same_ids = inside == len(q_ids) and g_ids.nunique() == q_ids.nunique() and len(q_ids) > 0
    return {"queries_in_gallery": inside, "n_queries": int(len(q_ids)), "same_store": bool(same_store), "same_ids": bool(same_ids)}


_TEXT = "text prior and zero-shot (a CLIP gallery with a text tower, e.g. streetclip)"
_HEAD = "location head (geosolver head train)"


@dataclass
class EvaluateConfig:
    """Everything one evaluation depends on (the ``geosolver evaluate`` options are derived from it,
    :func:`geosolver.cli.args.add_config_arguments`). Lists are swept: every combination is a row."""

    queries: Any = field(metadata={"help": "query embedding store (true lat/lon)", "required": True})
    gallery: Any = field(metadata={"help": "gallery embedding store", "required": True})
    strategies: Sequence[str] = field(default=STRATEGIES, metadata={
        "flag": "--strategy", "metavar": "STRATEGY", "kind": "name_list", "help": f"comma-separated, of {','.join(STRATEGIES)} (default all)"})
    ks: Sequence[int] = field(default=DEFAULT_KS, metadata={
        "flag": "--k", "metavar": "K", "kind": "positive_int_list", "help": f"comma-separated neighbour counts (default {','.join(map(str, DEFAULT_KS))})"})
    #: leave-one-out: ``True``, ``False`` or ``"auto"`` (on when queries and gallery are the same store); the CLI's default is "auto"
    exclude_self: bool | str = field(default=False, metadata={"cli": False})
    temperature: float | Sequence[float] = field(default=(DEFAULT_TEMPERATURE,), metadata={
        "kind": "positive_float_list", "help": f"softmax temperature; comma-separated values are swept (default {DEFAULT_TEMPERATURE:g})"})
    radius_km: float | Sequence[float] = field(default=(DEFAULT_RADIUS_KM,), metadata={
        "kind": "positive_float_list",
        "help": f"densest-cluster radius in km; comma-separated values are swept (default {DEFAULT_RADIUS_KM:g}). "
                "Every (strategy, k, temperature, radius) combination is a row of metrics.md/metrics.json, the best marked"})
    index_kind: str = field(default=KINDS[0], metadata={"flag": "--index", "choices": KINDS, "help": f"gallery index kind (default {KINDS[0]})"})
    #: a ready :class:`~geosolver.index.KnnIndex` over the gallery (then ``index_kind`` is ignored)
    index: Any = field(default=None, metadata={"cli": False})
    nprobe: int | None = field(default=None, metadata={"kind": "positive_int", "help": "IVF cells visited per query"})
    bootstrap: int = field(default=1000, metadata={"kind": "non_negative_int", "help": "bootstrap repetitions for the 95 % interval"})
    seed: int = field(default=0, metadata={"kind": "non_negative_int", "help": "seed of the bootstrap resamples and the random baseline (default 0)"})
    out: Any = field(default=None, metadata={"required": True, "help": "output directory"})
    plots: bool = field(default=True, metadata={"flag": "--no-plots", "help": "skip errors_map.png and errors_hist.png"})
    batch_size: int = field(default=8192, metadata={"cli": False})
    progress: bool = field(default=True, metadata={"cli": False})
    priors: Sequence[str] = field(default=("none",), metadata={
        "flag": "--prior", "metavar": "PRIOR", "item_choices": PRIORS, "group": _TEXT,
        "help": "comma-separated, of none,text: 'text' multiplies each neighbour's vote by the zero-shot probability of "
                "its country; 'none,text' reports both (default none)"})
    prior_by: str = field(default=PRIOR_BY[0], metadata={
        "choices": PRIOR_BY, "given_only": True, "group": _TEXT, "help": f"what --prior text matches (default {PRIOR_BY[0]})"})
    prior_weight: float | Sequence[float] = field(default=DEFAULT_PRIOR_WEIGHT, metadata={
        "kind": "non_negative_float_list", "given_only": True, "group": _TEXT,
        "help": f"exponent λ on the prior's probabilities; comma-separated values are swept (default {DEFAULT_PRIOR_WEIGHT:g})"})
    zero_shot: str | None = field(default=None, metadata={
        "choices": LEVELS, "metavar": "LEVEL", "group": _TEXT,
        "help": f"also score the text model alone, one of {', '.join(LEVELS)} (its own row, strategy zero-shot-LEVEL)"})
    text_temperature: float | None = field(default=None, metadata={
        "kind": "positive_float", "group": _TEXT, "help": "zero-shot softmax temperature (default: the CLIP's logit scale)"})
    prompt: str | None = field(default=None, metadata={
        "metavar": "TEMPLATE", "group": _TEXT, "help": "prompt template with {country}, {region}, {city} (default: StreetCLIP's forms)"})
    head: Any = field(default=None, metadata={
        "metavar": "DIR", "group": _HEAD, "help": "a head trained on this encoder's embeddings: adds the head's own row and, per "
        "setting, the vote fused with it (and, for a cells head, refined inside its top cells)"})
    fuse: Sequence[str] = field(default=FUSE, metadata={
        "item_choices": FUSE, "given_only": True, "group": _HEAD,
        "help": "with --head, comma-separated of none,head: the plain vote and/or the vote fused with the head (default none,head)"})
    head_weight: float | Sequence[float] = field(default=1.0, metadata={
        "kind": "non_negative_float_list", "given_only": True, "group": _HEAD,
        "help": "exponent λ on the head's probabilities; comma-separated values are swept (default 1)"})
    refine_top: int = field(default=5, metadata={
        "kind": "non_negative_int", "given_only": True, "group": _HEAD,
        "help": "cells head: also vote with the neighbours inside its N most probable cells; 0 = no such rows (default 5)"})
    #: more :func:`geosolver.index.index_for_store` settings (nlist, ...)
    index_params: dict = field(default_factory=dict, metadata={"cli": False})


@dataclass
class EvaluateResult:
    """What :func:`run_evaluate` measured: ``rows`` (one per setting, the best with
    ``is_best=True``; a setting a row's strategy does not use is ``None``), ``best``, the
    ``references`` (``random``, ``oracle``), ``self_overlap``, the ``warnings``, the recorded
    ``config`` (JSON) and ``timing_s`` (``search``, ``total``)."""

    rows: list[dict]
    best: dict
    references: dict[str, dict]
    self_overlap: dict
    warnings: list[str]
    config: dict
    timing_s: dict[str, float]

    def as_dict(self) -> dict:
        """The result as the dict :func:`evaluate` returns and ``metrics.json`` holds."""
        return {"rows": self.rows, "best": self.best, "references": self.references, "self_overlap": self.self_overlap,
                "warnings": self.warnings, "config": self.config, "timing_s": self.timing_s}


def evaluate(queries: EmbeddingStore | str | os.PathLike, gallery: EmbeddingStore | str | os.PathLike, **kw: Any) -> dict:
    """:func:`run_evaluate` with the settings as keywords (the fields of :class:`EvaluateConfig`;
    any other keyword goes to :func:`geosolver.index.index_for_store`: nlist, ...), its result as a dict
    (:meth:`EvaluateResult.as_dict`)."""
    names = {f.name for f in fields(EvaluateConfig)}
    extra = {k: kw.pop(k) for k in list(kw) if k not in names}
    cfg = EvaluateConfig(queries, gallery, **kw)
    cfg.index_params = {**cfg.index_params, **extra}
    return run_evaluate(cfg).as_dict()


def run_evaluate(cfg: EvaluateConfig) -> EvaluateResult:
    """Locate every query of ``cfg.queries`` in ``cfg.gallery`` and measure the errors.

    ``cfg.queries`` holds query embeddings with true ``lat``/``lon`` (degrees); ``cfg.gallery``
    the store to retrieve from (same encoder). With ``cfg.out`` it writes ``metrics.json``,
    ``metrics.md``, ``predictions.parquet``, ``config.json``, ``errors_map.png`` and
    ``errors_hist.png`` there (:data:`OUTPUT_FILES`). Leave-one-out (``exclude_self``): never
    retrieve a gallery row whose ``id`` equals the query's; ``"auto"``: on when queries and
    gallery are the same store (same path or the same set of ids). Either way, queries found in
    the gallery are counted (``self_overlap``) and, with leave-one-out off, warned about.
    ``priors`` ``"text"`` needs the gallery's encoder to be a CLIP with a text tower
    (:mod:`geosolver.prior`); ``head`` is a head's directory or a loaded
    :class:`~geosolver.heads.Head`; ``refine_top`` 0 adds no refined rows.

    Raises:
        EvaluateError: stores from different encoders or of different dims, empty query store,
        a temperature or radius that is not a finite number > 0.
    """
    queries, gallery, strategies, ks, exclude_self = cfg.queries, cfg.gallery, cfg.strategies, cfg.ks, cfg.exclude_self
    index, index_kind, bootstrap, seed, batch_size, progress = cfg.index, cfg.index_kind, cfg.bootstrap, cfg.seed, cfg.batch_size, cfg.progress
    zero_shot, head, refine_top = cfg.zero_shot, cfg.head, cfg.refine_top
    index_params = {**cfg.index_params, **({} if cfg.nprobe is None else {"nprobe": cfg.nprobe})}
    t0 = time.time()
    temps = positive_values("temperature", cfg.temperature)
    radii = positive_values("radius_km", cfg.radius_km)
    todo = settings_grid(strategies, ks, temps, radii)
    priors = _check_priors(cfg.priors)
    weights = positive_values("prior_weight", cfg.prior_weight, allow_zero=True) if "text" in priors else []
    fuse = _check_fuse(cfg.fuse, head)
    head_weights = positive_values("head_weight", cfg.head_weight, allow_zero=True) if "head" in fuse else []
    qs, gs = _open(queries), _open(gallery)
    head = _open_head(head, gs)  # before the search: a head of another encoder is refused at once
    overlap = self_overlap(qs, gs)
    if isinstance(exclude_self, str):
        if exclude_self != "auto":
            raise EvaluateError(f"exclude_self must be True, False or 'auto', got {exclude_self!r}")
        exclude_self = overlap["same_store"] or overlap["same_ids"]
        overlap["exclude_self_source"] = "auto"
        if exclude_self:
            why = "the same store" if overlap["same_store"] else "stores with the same set of ids"
            overlap["note"] = (
                f"queries and gallery are {why}: leave-one-out is on by default (a query never retrieves a gallery row "
                f"with its own id); pass --no-exclude-self (exclude_self=False) to let queries retrieve themselves"
            )
    else:
        overlap["exclude_self_source"] = "explicit"
    exclude_self = bool(exclude_self)
    overlap["exclude_self"] = exclude_self
    qs, gs, geo, nb = neighbour_table(
        qs, gs, max(k for _, k, _, _ in todo), exclude_self, index, index_kind, batch_size, progress, **index_params
    )
    search_s = time.time() - t0
    n = len(nb)
    q_ids = qs.metadata["id"].astype(str).to_numpy(dtype=object)
    q_lat, q_lon = qs.coords()
    g_lat, g_lon = gs.coords()

    true_cc = true_countries(qs)
    text = _text_model(geo, qs, nb, "text" in priors, cfg.prior_by, zero_shot, cfg.text_temperature, cfg.prompt, batch_size, progress)
    probs = {"text": text.get("nb_probs"), "head": _head_probs(head, qs, nb, batch_size) if "head" in fuse else None}
    plain = "none" in priors and (head is None or "none" in fuse)
    votes = [("none", None)] * plain + [("text", lam) for lam in weights] + [("head", lam) for lam in head_weights]
    q_emb = qs.embeddings() if head is not None else None
    result_rows, pred_frames = [], []

    def add_row(v, strategy, k, t, r, tag, lam, conf) -> None:
        m, km, pcc = score(q_lat, q_lon, v[0], v[1], true_cc, bootstrap, seed)
        result_rows.append({"strategy": strategy, "k": k, "temperature": t, "radius_km": r, "prior": tag, "prior_weight": lam, **m})
        pred_frames.append(_pred_frame(q_ids, q_lat, q_lon, v[0], v[1], km, true_cc, pcc, strategy, k, conf, t, r, lam, tag))

    for strategy, k, t, r in todo:
        for tag, lam in votes:
            factors = None if tag == "none" else prior_factors(probs[tag], lam)
            v = vote_setting(nb, strategy, k, t, r, temps[0], radii[0], factors)
            add_row(v, strategy, k, t, r, tag, lam, v.confidence)
        if head is not None and head.kind == "cells" and refine_top:
            v = head.refine(q_emb, nb.head(k), refine_top, strategy, temperature=temps[0] if t is None else t,
                            radius_km=radii[0] if r is None else r)
            add_row(v, strategy, k, t, r, "refine", None, v.confidence)
    if head is not None:
        g = head.predict(q_emb)
        add_row(g, f"head-{head.kind}", 0, None, None, "none", None, g.confidence)
    if zero_shot is not None:
        name = f"zero-shot-{zero_shot}"
        zlat, zlon, zconf = text["zero_shot"]
        m, km, pcc = score(q_lat, q_lon, zlat, zlon, true_cc, bootstrap, seed)
        result_rows.append({"strategy": name, "k": 0, "temperature": None, "radius_km": None, "prior": "none", "prior_weight": None, **m})
        pred_frames.append(_pred_frame(q_ids, q_lat, q_lon, zlat, zlon, km, true_cc, pcc, name, 0, zconf))

    excl_rows = [geo.rows_of_ids([i]) for i in q_ids] if exclude_self else None
    refs = {}
    for name, (plat, plon) in {
        "random": random_guess(g_lat, g_lon, n, seed, excl_rows),
        "oracle": oracle_guess(g_lat, g_lon, q_lat, q_lon, excl_rows),
    }.items():
        m, km, pcc = score(q_lat, q_lon, plat, plon, true_cc, bootstrap, seed)
        refs[name] = {"strategy": name, "k": 0, **m}
        pred_frames.append(_pred_frame(q_ids, q_lat, q_lon, plat, plon, km, true_cc, pcc, name, 0, np.full(n, np.nan)))

    best = max(result_rows, key=lambda r: r["geoscore"])
    for r in result_rows:
        r["is_best"] = r is best
    warnings = _warnings(overlap, max((r for r in result_rows if r["k"]), key=lambda r: r["geoscore"], default=best))
    for w in warnings:
        _warnings_module.warn(w, EvaluateWarning, stacklevel=_outside_stacklevel())
    config = {
        "queries": str(qs.path.resolve()),
        "gallery": str(gs.path.resolve()),
        "n_queries": n,
        "n_gallery": len(gs),
        "encoder": gs.encoder,
        "strategies": list(strategies),
        "ks": sorted({int(k) for k in ks}),
        "exclude_self": exclude_self,
        "exclude_self_source": overlap["exclude_self_source"],
        "temperature": temps[0] if len(temps) == 1 else temps,
        "radius_km": radii[0] if len(radii) == 1 else radii,
        "priors": list(priors),
        "text": text["describe"],
        "head": None if head is None else {**head.describe(), "weights": head_weights, "fuse": list(fuse), "refine_top": int(refine_top)},
        "index": {"kind": geo.index.kind, **geo.index.settings},
        "bootstrap": int(bootstrap),
        "seed": int(seed),
        "random_reference": "location of a uniformly random gallery image",
        "oracle_reference": "gallery coordinate nearest to the true location",
        "geosolver_version": version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result = EvaluateResult(result_rows, best, refs, overlap, warnings, config, {"search": search_s, "total": time.time() - t0})
    if cfg.out is not None:
        write_outputs(result.as_dict(), pd.concat(pred_frames, ignore_index=True), Path(cfg.out), plots=cfg.plots)
    return result


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this module, so that a warning of
    :func:`run_evaluate` points at the user's line whether it came through :func:`evaluate` or not."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _warnings(overlap: dict, best: dict) -> list[str]:
    """The loud messages of an evaluation: queries that can retrieve themselves, a perfect score
    (of ``best``, the best kNN row: a zero-shot row answers with label points, not gallery rows)."""
    out = []
    inside, n = overlap["queries_in_gallery"], overlap["n_queries"]
    if inside and not overlap["exclude_self"]:
        out.append(
            f"{inside} of {n} queries ({100 * inside / max(n, 1):.0f} %) are also in the gallery (same id) and leave-one-out is off: "
            f"those queries can retrieve themselves, so the scores are inflated (nn scores a perfect 5000 on them). "
            f"Pass --exclude-self (exclude_self=True) for an honest score."
        )
    if best["geoscore"] >= PERFECT_GEOSCORE and not (inside and not overlap["exclude_self"]):
        out.append(
            f"perfect score: {row_label(best)} has mean Geoscore {best['geoscore']:.0f} (mean error {best['mean_km']:.2g} km); "
            f"the gallery almost certainly holds the query photos themselves"
            + (" under other ids" if not inside else "")
            + ", so this measures lookup, not geolocation."
        )
    return out


def _open(store) -> EmbeddingStore:
    return store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)


def neighbour_table(
    queries: EmbeddingStore | str | os.PathLike,
    gallery: EmbeddingStore | str | os.PathLike,
    k: int,
    exclude_self: bool = False,
    index: Any = None,
    index_kind: str = "flat",
    batch_size: int = 8192,
    progress: bool = True,
    **index_params: Any,
) -> tuple[EmbeddingStore, EmbeddingStore, Geolocator, Neighbours]:
    """One kNN search of every stored query embedding in the gallery.

    Returns:
        ``(queries, gallery, geolocator, neighbours)``: the :class:`~geosolver.locate.Neighbours`
        ``(n, k')`` of every query with ``k' = min(k, len(gallery))`` (gallery coordinates in
        degrees); with ``exclude_self`` no neighbour has the query's ``id``.

    Raises:
        EvaluateError: different encoders / dims, empty query store.
    """
    qs, gs = _open(queries), _open(gallery)
    ok, why = encoder_compatible(qs.encoder, gs.encoder)
    if not ok:
        raise EvaluateError(f"queries {qs.path} and gallery {gs.path} come from different encoders ({why})")
    if qs.dim != gs.dim:
        raise EvaluateError(f"queries {qs.path} have dim {qs.dim}, gallery {gs.path} has dim {gs.dim}")
    if len(qs) == 0:
        raise EvaluateError(f"query store {qs.path} is empty")
    geo = Geolocator.from_store(gs, index=index, index_kind=index_kind, progress=progress, **index_params)
    q_ids = qs.metadata["id"].astype(str).to_numpy(dtype=object)
    k_eff = min(int(k), len(gs))
    parts: list[Neighbours] = []
    with tqdm(total=len(qs), desc="search", unit="q", disable=not progress, leave=False) as bar:
        for off, emb in qs.iter_batches(batch_size):
            excl = list(q_ids[off : off + emb.shape[0]]) if exclude_self else None
            parts.append(geo.neighbours(emb, k_eff, exclude_ids=excl))
            bar.update(emb.shape[0])
    return qs, gs, geo, Neighbours.concat(parts)


def tune(
    queries: EmbeddingStore | str | os.PathLike,
    gallery: EmbeddingStore | str | os.PathLike,
    ks: Sequence[int] = (5, 10, 20, 50),
    temperatures: Sequence[float] = (0.01, 0.02, 0.05, 0.1),
    radii_km: Sequence[float] = (100.0, 250.0, 500.0, 1000.0),
    strategies: Sequence[str] = ("weighted-mean", "densest"),
    exclude_self: bool = False,
    **search_kw: Any,
) -> pd.DataFrame:
    """Grid search of (strategy, k, temperature, radius) by mean Geoscore, from one kNN search.

    Tune on a validation split, then report with :func:`evaluate` on held-out queries.

    Returns:
        DataFrame ``strategy, k, temperature, radius_km, geoscore, median_km``, best first
        (``weighted-mean`` does not use the radius: its rows have ``radius_km = NaN``).
    """
    temps, radii = positive_values("temperature", temperatures), positive_values("radius_km", radii_km)
    todo = settings_grid(strategies, ks, temps, radii)
    qs, _, _, nb = neighbour_table(queries, gallery, max(k for _, k, _, _ in todo), exclude_self, **search_kw)
    q_lat, q_lon = qs.coords()
    out = []
    for strategy, k, t, r in todo:
        v = vote_setting(nb, strategy, k, t, r, temps[0], DEFAULT_RADIUS_KM)
        km = haversine(q_lat, q_lon, v.lat, v.lon, check=False)
        out.append({"strategy": strategy, "k": k, "temperature": np.nan if t is None else t, "radius_km": np.nan if r is None else r, "geoscore": float(geoscore(km).mean()), "median_km": float(np.median(km))})
    return pd.DataFrame(out).sort_values("geoscore", ascending=False, ignore_index=True)


def _pred_frame(
    ids, tlat, tlon, plat, plon, km, tcc, pcc, strategy, k, conf, temperature=float("nan"), radius_km=float("nan"), prior_weight=float("nan"),
    prior="none",
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ids,
            "true_lat": tlat,
            "true_lon": tlon,
            "pred_lat": plat,
            "pred_lon": plon,
            "km": km,
            "geoscore": geoscore(km),
            "country_true": tcc.astype(str),
            "country_pred": pcc.astype(str),
            "confidence": conf,
            "strategy": strategy,
            "k": np.int32(k),
            "temperature": np.float64(temperature),
            "radius_km": np.float64(radius_km),
            "prior_weight": np.float64(prior_weight),
            "prior": prior,
        }
    )


def _same_setting(col: pd.Series, value: Any) -> np.ndarray:
    """``col == value`` where ``NaN`` (or ``None`` from JSON) equals ``NaN``."""
    v = float("nan") if value is None else float(value)
    return col.isna().to_numpy() if v != v else np.isclose(col.to_numpy(np.float64), v)


def write_outputs(result: dict, preds: pd.DataFrame, out: Path, plots: bool = True) -> None:
    """Write every evaluation file into ``out`` (see :data:`OUTPUT_FILES`)."""
    from geosolver.plots import plot_error_distribution, plot_error_map  # matplotlib: only when plots are drawn

    run = RunDir(out, "evaluate")
    run.write_config(result["config"])
    run.write_json("metrics.json", result)
    run.write_text("metrics.md", metrics_markdown(result) + "\n")
    run.write_parquet("predictions.parquet", preds)
    if plots:
        b = result["best"]
        sel = preds[(preds["strategy"] == b["strategy"]).to_numpy() & (preds["k"] == b["k"]).to_numpy()
                    & _same_setting(preds["temperature"], b.get("temperature")) & _same_setting(preds["radius_km"], b.get("radius_km"))
                    & _same_setting(preds["prior_weight"], b.get("prior_weight")) & (preds["prior"] == b.get("prior", "none")).to_numpy()]
        label = row_label(b)
        plot_error_map(
            sel["true_lat"].to_numpy(), sel["true_lon"].to_numpy(), sel["km"].to_numpy(), out / "errors_map.png",
            title=f"{label}: error at each query's true location (mean Geoscore {b['geoscore']:.0f})",
        )
        series = {label: sel["km"].to_numpy()}
        for ref in ("random", "oracle"):
            series[ref] = preds.loc[preds["strategy"] == ref, "km"].to_numpy()
        plot_error_distribution(series, out / "errors_hist.png", title=f"errors: best strategy vs references ({len(sel)} queries)")


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def row_label(r: dict) -> str:
    """``densest k=10`` (plus ``T=0.05 r=500km`` where the row's temperature / radius are set)."""
    out = f"{r['strategy']} k={r['k']}" if r.get("k") else str(r["strategy"])
    t, rad = r.get("temperature"), r.get("radius_km")
    if t is not None and t == t:
        out += f" T={t:g}"
    if rad is not None and rad == rad:
        out += f" r={rad:g}km"
    lam = r.get("prior_weight")
    if r.get("prior") in ("text", "head") and lam is not None and lam == lam:
        out += f" +{r['prior']} prior λ={lam:g}"
    if r.get("prior") == "refine":
        out += " in the head's top cells"
    return out


def _fmt(v: Any, col: str) -> str:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return f"[{v[0]:.0f}, {v[1]:.0f}]"
    if v is None:
        return "–"
    if isinstance(v, float):
        if np.isnan(v):
            return "–"
        if col.startswith("acc@") or col == "country_acc":
            return f"{100 * v:.1f}"
        if col == "geoscore" or col.endswith("_km"):
            return f"{v:.1f}" if col.endswith("_km") and v < 100 else f"{v:.0f}"
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` (dicts) with the given columns (accuracies in %)."""
    head = [c if not (c.startswith("acc@") or c == "country_acc") else f"{c} %" for c in columns]
    left = {"run", "encoder", "strategy"}
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if c in left else "---:" for c in columns) + "|"]
    for r in rows:
        ref = r.get("strategy") in REFERENCES or r.get("k") == 0
        lines.append("| " + " | ".join("–" if ref and c == "k" else _fmt(r.get(c, ""), c) for c in columns) + " |")
    return "\n".join(lines)


def _swept(c: dict) -> bool:
    return isinstance(c.get("temperature"), list) or isinstance(c.get("radius_km"), list)


def _values(v) -> str:
    return ",".join(f"{x:g}" for x in v) if isinstance(v, list) else f"{v:g}"


def metrics_markdown(result: dict) -> str:
    """The evaluation table: every row (best marked), then the random and oracle references;
    a note with the settings, leave-one-out and any warning."""
    c = result["config"]
    swept = _swept(c)
    text = "text" in (c.get("priors") or []) or bool(c.get("head"))
    cols = ["strategy", "k", *(["temperature", "radius_km"] if swept else []), *(["prior", "prior_weight"] if text else []), *METRIC_COLUMNS, "best"]
    rows = [{**r, "best": "◀ best" if r.get("is_best", r is result["best"]) else ""} for r in result["rows"]]
    rows += [{**result["references"]["random"], "best": ""}, {**result["references"]["oracle"], "best": ""}]
    ov = result.get("self_overlap") or {}
    if c.get("exclude_self"):
        loo = "leave-one-out on" + (" (automatic: " + ov["note"].split(":")[0] + ")" if ov.get("note") else "")
    else:
        loo = "leave-one-out off"
    inside = f", {ov['queries_in_gallery']} of {ov['n_queries']} queries have their id in the gallery" if ov.get("queries_in_gallery") else ""
    note = (
        f"{c['n_queries']} queries, gallery of {c['n_gallery']} ({c['encoder'].get('name')}), "
        f"temperature {_values(c['temperature'])}, radius {_values(c['radius_km'])} km, {loo}{inside}. "
        f"Best: {row_label(result['best'])}. geoscore_ci95: 95 % bootstrap interval."
    )
    warn = "".join(f"\n\n**WARNING**: {w}" for w in result.get("warnings", []))
    return markdown_table(rows, cols) + "\n\n" + note + warn


def load_run(run_dir: str | os.PathLike) -> dict:
    """Read ``metrics.json`` of an evaluation run directory."""
    p = Path(run_dir) / "metrics.json"
    if not p.exists():
        raise EvaluateError(f"{run_dir} is not an evaluation run (no metrics.json); run `geosolver evaluate --out {run_dir}` first")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise EvaluateError(f"{p} is not valid JSON: {e}") from None


def compare_runs(run_dirs: Sequence[str | os.PathLike], all_rows: bool = False, references: bool = True) -> tuple[list[dict], str]:
    """Put several evaluations in one table.

    Args:
        run_dirs: evaluation output directories.
        all_rows: every row instead of each run's best.
        references: show each run's random and oracle reference rows.

    Returns:
        ``(rows, markdown)``; each row has ``run`` (the directory name), ``encoder``, ``gallery_rows``,
        ``strategy``, ``k`` and the metrics. ``rows`` holds the picked rows and (``references``)
        each run's oracle row; the markdown table shows, per run, the picked rows, then the random
        and the oracle reference (reference rows have no ``k``: shown as ``–``). Runs that swept
        temperature / radius add those columns.
    """
    rows, shown, swept = [], [], False
    for d in run_dirs:
        r = load_run(d)
        c = r.get("config", {})
        swept = swept or _swept(c)
        tag = {"run": Path(d).name, "encoder": c.get("encoder", {}).get("name", "?"), "gallery_rows": c.get("n_gallery", "?")}
        picked = [{**tag, **x} for x in (r["rows"] if all_rows else [r["best"]])]
        rows.extend(picked)
        shown.extend(picked)
        if references:
            refs = r.get("references", {})
            if "random" in refs:
                shown.append({**tag, **refs["random"]})
            oracle = {**tag, **refs["oracle"]}
            rows.append(oracle)
            shown.append(oracle)
    cols = ["run", "encoder", "gallery_rows", "strategy", "k", *(["temperature", "radius_km"] if swept else []), *METRIC_COLUMNS]
    return rows, markdown_table(shown, cols)
