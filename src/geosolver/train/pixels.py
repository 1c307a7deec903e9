"""The image side of training: pixels decoded by ``DataLoader`` workers or cached in RAM, the
frozen-trunk cache, the endless stream of training batches (sharded over processes), and
:class:`TrainInputs` — what the trained module eats and how the current model embeds a row.

Images are read through the project's one decode path, :mod:`geosolver.embed.decode`
(:class:`~geosolver.embed.decode.ImageRows` + :func:`~geosolver.embed.decode.make_loader`); an image
that cannot be decoded is logged once and left out, never fatal.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from geosolver.embed.decode import Decoded, ImageRows, make_loader
from geosolver.encoders import Encoder
from geosolver.errors import TrainError
from geosolver.progress import tqdm
from geosolver.train.sampler import CellGroupBatchSampler, SamplerPosition

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# pixels: decoded on the fly by DataLoader workers, or cached in RAM
# ----------------------------------------------------------------------------------------------
class Pixels:
    """Preprocessed pixels of the dataset rows, from a RAM cache or decoded by workers.

    Args:
        sources: ``(n,)`` image sources of the dataset table's rows.
        preprocessor, min_side: the encoder's (see :class:`~geosolver.embed.decode.ImageRows`).
        num_workers: decode worker processes (0: decode in this process).
        progress: show a progress bar while building the cache.
    """

    def __init__(self, sources: np.ndarray, preprocessor, min_side: int | None, num_workers: int, progress: bool):
        self.images = ImageRows(sources, preprocessor, min_side)
        self.num_workers = num_workers
        self.progress = progress
        self.cache: torch.Tensor | None = None  # (n, 3, S, S) float16
        self.ok = np.ones(len(sources), bool)
        self.warned: set[int] = set()

    def _loader(self, rows: Sequence[int] | None = None, batch_size: int = 64, batch_sampler=None):
        """A ``DataLoader`` of :class:`~geosolver.embed.decode.Decoded` batches over ``rows`` (all
        rows when None) or over ``batch_sampler``'s batches (workers kept between epochs)."""
        from torch.utils.data import Subset  # torch: optional heavy backend

        ds = self.images if rows is None else Subset(self.images, list(rows))
        return make_loader(ds, batch_size, self.num_workers, batch_sampler=batch_sampler, persistent_workers=batch_sampler is not None)

    def _decoded(self, loader) -> Iterator[Decoded]:
        """The loader's batches; a warning (once per row) for each image that could not be decoded.
        Row numbers are the table's (a ``Subset`` yields the rows' own indices)."""
        for batch in loader:
            for row, why in batch.errors:
                if row not in self.warned:
                    self.warned.add(row)
                    log.warning("skipping %s: %s", self.images.sources[row], why)
            yield batch

    def build_cache(self, batch_size: int = 64) -> None:
        """Decode + preprocess every row once; rows that fail are marked in :attr:`ok`."""
        n = len(self.images)
        cache = None
        self.ok[:] = False
        with tqdm(total=n, desc="cache images", unit="img", disable=not self.progress) as bar:
            for batch in self._decoded(self._loader(None, batch_size)):
                if batch.pixels is not None:
                    if cache is None:
                        cache = torch.empty((n, *batch.pixels.shape[1:]), dtype=torch.float16)
                    cache[torch.from_numpy(batch.ok_rows)] = batch.pixels.to(torch.float16)
                    self.ok[batch.ok_rows] = True
                bar.update(len(batch.rows))
        if cache is None:
            raise TrainError("no image of the dataset could be decoded")
        self.cache = cache

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(rows that decoded, pixels float32 (r, 3, S, S))`` over ``rows`` in order."""
        rows = np.asarray(rows, np.int64)
        if self.cache is not None:
            rows = rows[self.ok[rows]]
            for s in range(0, len(rows), batch_size):
                r = rows[s : s + batch_size]
                yield r, self.cache[torch.from_numpy(r)].float()
            return
        for batch in self._decoded(self._loader(rows.tolist(), batch_size)):
            if batch.pixels is not None:
                yield batch.ok_rows, batch.pixels

    def train_batches(self, sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int, world: int, at: SamplerPosition) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Endless ``(rows, pixels)`` training batches from position ``at`` on (kept up to date:
        the batches handed out so far); process ``rank`` of ``world`` takes every ``world``-th
        batch of the sampler (only those are decoded)."""
        mapped = MapBatches(sampler, rows, rank, world)
        loader = None
        for _ in epochs(sampler, mapped, at):
            if self.cache is not None:
                for b in mapped:
                    at.batch += 1
                    r = np.asarray(b, np.int64)
                    r = r[self.ok[r]]
                    if len(r) >= 2:
                        yield r, self.cache[torch.from_numpy(r)].float()
            else:
                if loader is None:
                    loader = self._loader(None, batch_sampler=mapped)
                for batch in self._decoded(loader):  # one Decoded per sampler batch, in order
                    at.batch += 1
                    if batch.pixels is not None and len(batch.ok_rows) >= 2:
                        yield batch.ok_rows, batch.pixels


def trunk_batches(sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int, world: int, at: SamplerPosition) -> Iterator[tuple[np.ndarray, None]]:
    """Endless training batches of row numbers only (the trunk cache supplies the inputs), from
    position ``at`` on (kept up to date)."""
    mapped = MapBatches(sampler, rows, rank, world)
    for _ in epochs(sampler, mapped, at):
        for b in mapped:
            at.batch += 1
            yield np.asarray(b, np.int64), None


def epochs(sampler: CellGroupBatchSampler, mapped: MapBatches, at: SamplerPosition) -> Iterator[int]:
    """Set the sampler to epoch ``at.epoch``, ``at.epoch + 1``, ... for each pass over ``mapped``;
    the first pass skips the ``at.batch`` batches already taken (a resumed run)."""
    mapped.skip = at.batch
    while True:
        sampler.set_epoch(at.epoch)
        yield at.epoch
        at.epoch, at.batch = at.epoch + 1, 0


class MapBatches:
    """Batch sampler: this process's share of the sampler's batches, positions mapped to dataset
    rows; the next pass leaves out its first ``skip`` batches."""

    def __init__(self, sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int = 0, world: int = 1):
        self.sampler, self.rows, self.rank, self.world = sampler, rows, rank, world
        self.skip = 0

    def __len__(self) -> int:
        return len(range(self.rank, len(self.sampler), self.world))

    def __iter__(self):
        skip, self.skip = self.skip, 0
        mine = (b for bi, b in enumerate(self.sampler) if bi % self.world == self.rank)
        for b in itertools.islice(mine, skip, None):  # skipped batches are drawn (the sampler's RNG advances), not decoded
            yield self.rows[np.asarray(b)].tolist()


def model_input(enc: Encoder, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels ``(n, 3, S, S)`` as the encoder's model takes them: float32 on its device (channels-last
    where the encoder runs so)."""
    x = pixels.to(enc.device, dtype=torch.float32, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if enc.channels_last else x


class TrunkCache:
    """Frozen-trunk outputs (float32) of the needed rows, plus mirrored images' for ``flip_rows``.

    Args:
        enc: the encoder; trunk: pixels → trunk output (:func:`~geosolver.train.trunk.split_model`).
        pixels: the dataset's pixels; rows: the table rows to cache.
        flip_rows: rows whose mirror image is cached too (None: no flips).
        n_table: rows in the table; batch_size: images per trunk forward pass.
    """

    def __init__(self, enc: Encoder, trunk, pixels: Pixels, rows: np.ndarray, flip_rows: np.ndarray | None, n_table: int, batch_size: int, progress: bool):
        self.pos = np.full(n_table, -1, np.int64)
        self.pos[rows] = np.arange(len(rows))
        self.ok = np.zeros(n_table, bool)
        self.plain: torch.Tensor | None = None
        self.flipped: torch.Tensor | None = None
        want_flip = np.zeros(n_table, bool)
        if flip_rows is not None:
            want_flip[flip_rows] = True
        was = enc.model.training
        enc.model.eval()
        with torch.no_grad(), tqdm(total=len(rows), desc="trunk cache", unit="img", disable=not progress) as bar:
            for r, px in pixels.batches(rows, batch_size):
                t = trunk(model_input(enc, px)).float().cpu()
                if self.plain is None:
                    self.plain = torch.zeros((len(rows), *t.shape[1:]), dtype=torch.float32)
                    if flip_rows is not None:
                        self.flipped = torch.zeros_like(self.plain)
                idx = torch.from_numpy(self.pos[r])
                self.plain[idx] = t
                if self.flipped is not None:
                    fsel = want_flip[r]
                    if fsel.any():
                        self.flipped[idx[torch.from_numpy(fsel)]] = trunk(model_input(enc, px[torch.from_numpy(fsel)].flip(-1))).float().cpu()
                self.ok[r] = True
                bar.update(len(r))
        enc.model.train(was)
        if self.plain is None:
            raise TrainError("no image of the dataset could be decoded")

    def get(self, rows: np.ndarray, flip: torch.Tensor | None = None) -> torch.Tensor:
        """Trunk outputs ``(len(rows), ...)`` float32; the mirror image's where ``flip`` ``(len(rows),)`` is set."""
        idx = torch.from_numpy(self.pos[rows])
        x = self.plain[idx]
        if flip is not None and self.flipped is not None and bool(flip.any()):
            x = torch.where(flip.view(-1, *([1] * (x.ndim - 1))), self.flipped[idx], x)
        return x


# ----------------------------------------------------------------------------------------------
# what the trained module eats
# ----------------------------------------------------------------------------------------------
class EncoderFeatures(torch.nn.Module):
    """``pixels → enc.features(pixels)`` as a module, so DDP sees the forward pass."""

    def __init__(self, enc: Encoder):
        super().__init__()
        self.model = enc.model
        self.enc = [enc]  # a list: the model is not registered as a submodule twice

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.enc[0].features(pixels)


@dataclass
class TrainInputs:
    """The inputs of the trained module: pixels into the whole encoder, or — with ``--cache-trunk``
    — cached trunk outputs into the head.

    Attributes:
        enc: the encoder being trained.
        pixels: the dataset's pixels.
        batch_size: images per embedding forward pass (validation, base embeddings).
        trunk, head: the frozen-trunk cache and the trainable head on top of it, or None.
    """

    enc: Encoder
    pixels: Pixels
    batch_size: int
    trunk: TrunkCache | None = None
    head: torch.nn.Module | None = None

    def module(self) -> torch.nn.Module:
        """The module the optimiser trains through: the head, or the encoder's features."""
        return EncoderFeatures(self.enc) if self.head is None else self.head

    def batches(self, sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int, world: int, at: SamplerPosition) -> Iterator[tuple[np.ndarray, torch.Tensor | None]]:
        """Endless ``(rows, pixels or None)`` training batches (None: the trunk cache has the inputs)
        from sampler position ``at`` on, which follows the batches handed out."""
        if self.trunk is None:
            return self.pixels.train_batches(sampler, rows, rank, world, at)
        return trunk_batches(sampler, rows, rank, world, at)

    def forward_input(self, rows: np.ndarray, pixels: torch.Tensor | None, flip: torch.Tensor | None) -> torch.Tensor:
        """The module's input for a batch: pixels (mirrored where ``flip``) or the cached trunk outputs."""
        if self.trunk is not None:
            return self.trunk.get(rows, flip)
        if flip is not None:
            return torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        return pixels

    def embed(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Current-model embeddings ``(len(rows), dim)`` float32, L2-normalised (zeros where an image
        failed), and the ok mask ``(len(rows),)``."""
        enc = self.enc
        out = np.zeros((len(rows), enc.dim), np.float32)
        if self.trunk is None:
            pos = {int(r): i for i, r in enumerate(rows)}
            ok = np.zeros(len(rows), bool)
            for r, px in self.pixels.batches(rows, self.batch_size):
                idx = np.array([pos[int(x)] for x in r], np.int64)
                out[idx] = enc.embed_pixels(px)
                ok[idx] = True
            return out, ok
        ok = self.trunk.ok[rows]
        sel = np.flatnonzero(ok)
        with torch.no_grad(), torch.autocast(enc.device.type, dtype=enc.dtype, enabled=enc.dtype != torch.float32):
            for s in range(0, len(sel), self.batch_size):
                part = sel[s : s + self.batch_size]
                e = self.head(self.trunk.get(rows[part]).to(enc.device)).float()
                out[part] = torch.nn.functional.normalize(e, dim=-1).cpu().numpy()
        return out, ok
