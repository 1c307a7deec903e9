"""Generated embeddings with a known relation to location (tests, benchmarks, demos)."""

from __future__ import annotations

import numpy as np

from geosolver.geo import latlon_to_xyz
from geosolver.numeric import l2_normalize


def geo_embeddings(
    lat: np.ndarray,
    lon: np.ndarray,
    dim: int = 64,
    signal: float = 1.0,
    length_scale: float = 0.3,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """Unit embeddings whose expected cosine similarity decreases with great-circle distance.

    ``x = normalise([signal · f(p), ε])`` where ``f`` are ``dim // 2`` random Fourier features of
    the 3-D unit vector ``p`` of ``(lat, lon)`` (kernel ``exp(−‖p−q‖² / (2·length_scale²))``,
    chord distance) and ``ε`` is isotropic Gaussian noise of expected norm 1 in the other
    ``dim − dim // 2`` dimensions. ``signal = 0`` gives embeddings independent of location.

    Args:
        lat, lon: ``(n,)`` degrees.
        dim: embedding dimension.
        signal: weight of the location features relative to the noise.
        length_scale: kernel length scale in chord units (0.3 ≈ 1900 km).
        rng: seed or generator.

    Returns:
        ``(n, dim)`` float32, rows L2-normalised.
    """
    rng = np.random.default_rng(rng)
    p = latlon_to_xyz(lat, lon)
    k = dim // 2
    w = rng.normal(0.0, 1.0 / length_scale, (3, k))
    b = rng.uniform(0.0, 2 * np.pi, k)
    f = np.sqrt(2.0 / k) * np.cos(p @ w + b)
    eps = rng.normal(0.0, 1.0 / np.sqrt(dim - k), (len(p), dim - k))
    return l2_normalize(np.concatenate([signal * f, eps], axis=1))
