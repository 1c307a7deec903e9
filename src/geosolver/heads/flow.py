"""Conditional flow matching on the sphere S² (after PLONK, CVPR 2025; our own code).

Locations are unit vectors ``x ∈ S²`` (:func:`geosolver.geo.latlon_to_xyz`). Training draws a
noise point ``x0`` uniformly on the sphere, a time ``t ~ U(0, 1)`` and walks the great circle
from ``x0`` to the true point ``x1``:

    x_t = sin((1-t)θ)/sin θ · x0 + sin(tθ)/sin θ · x1,     θ = arccos(x0·x1)
    u_t = dx_t/dt = θ/sin θ · (cos(tθ) · x1 − cos((1-t)θ) · x0)      (tangent at x_t, |u_t| = θ)

and regresses a velocity field ``v(x_t, t | embedding)`` onto ``u_t`` (mean squared error); ``v``
is projected onto the tangent plane at ``x_t`` (``v − (v·x)x``), so it never pushes off the
sphere. The field is a residual MLP over ``x_t`` whose blocks are modulated (adaptive layer norm,
as PLONK's) by the embedding and a Fourier embedding of ``t``.

**Sampling**: ``S`` noise points per query integrated from ``t = 0`` to 1 with the midpoint
(RK2) rule, re-projected onto the sphere after every step. **Prediction**: the densest sample —
each sample's kernel density among the samples, with the von Mises–Fisher kernel
``exp(κ(x·y − 1))``, ``κ = (R / bandwidth)²`` (``kde_km``; ≈ a Gaussian of that width in km).
**Probability** of a place (the :class:`~geosolver.prior.LocationPrior` of this head, also the
probability map): the same kernel averaged over the samples, in [0, 1] — about the share of the
head's samples within ``kde_km`` of the place.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from geosolver.geo import EARTH_RADIUS_KM, latlon_to_xyz, xyz_to_latlon
from geosolver.heads.base import Head, HeadGuess


def tangent(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``v`` projected onto the tangent plane of the sphere at unit vectors ``x`` (last axis 3)."""
    return v - (v * x).sum(-1, keepdim=True) * x


def uniform_sphere(shape: tuple[int, ...], generator: torch.Generator, device="cpu") -> torch.Tensor:
    """Unit vectors uniform on S², shape ``(*shape, 3)``."""
    z = torch.randn(*shape, 3, generator=generator).to(device)
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def geodesic(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, u_t)``: the point at time ``t`` on the great circle from ``x0`` to ``x1`` and its velocity."""
    cos = (x0 * x1).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    t = t[..., None]
    xt = (torch.sin((1 - t) * theta) * x0 + torch.sin(t * theta) * x1) / sin
    ut = theta / sin * (torch.cos(t * theta) * x1 - torch.cos((1 - t) * theta) * x0)
    return xt, ut


class _Block(torch.nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden, elementwise_affine=False)
        self.mod = torch.nn.Linear(hidden, 2 * hidden)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(hidden, 2 * hidden), torch.nn.GELU(), torch.nn.Linear(2 * hidden, hidden))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(c).chunk(2, dim=-1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class VelocityField(torch.nn.Module):
    """``v(x, t | emb)``: a residual MLP on ``x`` with blocks modulated by the embedding and ``t``."""

    def __init__(self, dim: int, hidden: int = 256, blocks: int = 3, t_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(t_freqs, dtype=torch.float32) * math.pi / 2 ** (t_freqs // 2))
        self.emb_norm = torch.nn.LayerNorm(dim)  # unit-norm embeddings have entries ~1/sqrt(dim): rescale them
        self.cond = torch.nn.Sequential(torch.nn.Linear(dim + 2 * t_freqs, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden))
        self.inp = torch.nn.Linear(3, hidden)
        self.blocks = torch.nn.ModuleList(_Block(hidden) for _ in range(blocks))
        self.out = torch.nn.Linear(hidden, 3)

    def condition(self, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ft = t[..., None] * self.freqs
        return torch.nn.functional.silu(self.cond(torch.cat([self.emb_norm(emb), torch.sin(ft), torch.cos(ft)], dim=-1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        c = self.condition(emb, t)
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, c)
        return tangent(self.out(h), x)


def flow_loss(model: VelocityField, emb: torch.Tensor, x1: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flow-matching loss of a batch: ``mean |v(x_t, t | emb) − u_t|²`` (noise and ``t`` from ``generator``)."""
    x0 = uniform_sphere((x1.shape[0],), generator, x1.device)
    t = torch.rand(x1.shape[0], generator=generator).to(x1.device)
    xt, ut = geodesic(x0, x1, t)
    return ((model(xt, t, emb) - ut) ** 2).sum(-1).mean()


@torch.no_grad()
def sample(model: VelocityField, emb: torch.Tensor, n_samples: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, S, 3)`` samples on S² for each of ``n`` embeddings: midpoint-rule ODE, re-projected each step."""
    n = emb.shape[0]
    x = uniform_sphere((n, n_samples), generator, emb.device)
    e = emb[:, None, :].expand(n, n_samples, emb.shape[1])
    dt = 1.0 / steps

    def v(x: torch.Tensor, t: float) -> torch.Tensor:
        return model(x, torch.full(x.shape[:-1], t, device=x.device), e)

    for i in range(steps):
        t = i * dt
        mid = x + 0.5 * dt * v(x, t)
        mid = mid / mid.norm(dim=-1, keepdim=True)
        x = x + dt * v(mid, t + 0.5 * dt)
        x = x / x.norm(dim=-1, keepdim=True)
    return x


def kappa(kde_km: float) -> float:
    """The von Mises–Fisher concentration whose kernel has a width of about ``kde_km``."""
    return (EARTH_RADIUS_KM / kde_km) ** 2


def kernel_density(samples: torch.Tensor, points: torch.Tensor, kap: float) -> torch.Tensor:
    """``(n, m)`` mean over the ``S`` samples ``(n, S, 3)`` of ``exp(κ(x·s − 1))`` at ``points (n, m, 3)``: in [0, 1]."""
    return torch.exp(kap * (points @ samples.transpose(1, 2) - 1.0)).mean(-1)


class FlowHead(Head):
    """A trained flow on S² (load with :func:`geosolver.heads.load_head`).

    Args (beyond :class:`~geosolver.heads.base.Head`'s): ``n_samples`` and ``steps`` of the
    sampler, ``kde_km`` the kernel width, ``seed`` of the noise (answers are reproducible).
    """

    kind = "flow"

    def __init__(self, model: VelocityField, info: dict, weight: float = 1.0, device: str = "cpu",
                 n_samples: int = 128, steps: int = 16, kde_km: float = 100.0, seed: int = 0):
        super().__init__(model, info, weight, device)
        self.n_samples, self.steps, self.kde_km, self.seed = int(n_samples), int(steps), float(kde_km), int(seed)

    def samples(self, emb: np.ndarray) -> torch.Tensor:
        """``(n, S, 3)`` samples of each query's location (on the head's device)."""
        e = torch.from_numpy(self._embeddings(emb)).to(self.device)
        g = torch.Generator().manual_seed(self.seed)
        return torch.cat([sample(self.model, e[s : s + 256], self.n_samples, self.steps, g) for s in range(0, len(e), 256)])

    def predict(self, emb: np.ndarray) -> HeadGuess:
        return self._mode(self.samples(emb))

    def probabilities(self, emb: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return self._density(self.samples(emb), lat, lon)

    def density_map(self, emb: np.ndarray, step_deg: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The probability map of one query: ``(lat (H,), lon (W,), p (H, W))`` on a ``step_deg`` grid,
        ``p`` the kernel density of the samples normalised to sum to 1 over the grid's cell areas."""
        return self.guess_and_map(emb, step_deg)[1]

    def guess_and_map(self, emb: np.ndarray, step_deg: float = 2.0) -> tuple[HeadGuess, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`predict` and :meth:`density_map` of one query from one set of samples (the web
        app shows both; sampling is the cost)."""
        s = self.samples(np.asarray(emb)[None] if np.ndim(emb) == 1 else emb[:1])
        lat = np.arange(-90 + step_deg / 2, 90, step_deg)
        lon = np.arange(-180 + step_deg / 2, 180, step_deg)
        glat, glon = np.meshgrid(lat, lon, indexing="ij")
        mass = self._density(s, glat.ravel()[None], glon.ravel()[None])[0].reshape(glat.shape) * np.cos(np.radians(glat))
        return self._mode(s), (lat, lon, mass / max(mass.sum(), 1e-300))

    def _mode(self, s: torch.Tensor) -> HeadGuess:
        """The densest of each query's samples (its kernel density among them) as the guess."""
        dens = kernel_density(s, s, kappa(self.kde_km))  # (n, S): each sample's density among the samples
        best = dens.argmax(dim=1)
        mode = s[torch.arange(len(s)), best].cpu().numpy().astype(np.float64)
        lat, lon = xyz_to_latlon(mode)
        return HeadGuess(np.asarray(lat), np.asarray(lon), dens.max(dim=1).values.cpu().numpy().astype(np.float64))

    def _density(self, s: torch.Tensor, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """``(n, k)`` kernel density of each query's samples at its points ``lat``/``lon`` ``(n, k)``."""
        pts = torch.from_numpy(latlon_to_xyz(np.asarray(lat, np.float64), np.asarray(lon, np.float64))).float().to(self.device)
        return kernel_density(s, pts, kappa(self.kde_km)).cpu().numpy().astype(np.float64)
