"""The image side of training: pixels decoded by ``DataLoader`` workers or cached in RAM, the
frozen-trunk cache, and the endless stream of training batches (sharded over processes)."""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from geosolver.train.params import TrainError
from geosolver.train.sampler import CellGroupBatchSampler

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# pixels: decoded on the fly by DataLoader workers, or cached in RAM
# ----------------------------------------------------------------------------------------------
class RowDataset:
    """Map-style dataset: row → ``(row, pixels float32 (3,S,S) or None)``; bad images give None."""

    def __init__(self, sources: np.ndarray, preprocessor, min_side: int | None):
        self.sources = sources
        self.preprocessor = preprocessor
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        from geosolver.embed import error_text, load_pixels

        try:
            return int(i), load_pixels(self.sources[i], self.preprocessor, self.min_side)
        except Exception as e:  # noqa: BLE001 — a bad image is skipped, never fatal
            log.warning("skipping %s: %s", self.sources[i], error_text(e))
            return int(i), None


def _collate(items):
    ok = [it for it in items if it[1] is not None]
    rows = np.array([it[0] for it in ok], dtype=np.int64)
    px = torch.from_numpy(np.stack([it[1] for it in ok])) if ok else None
    return rows, px


def _worker_init(_):
    torch.set_num_threads(1)


class Pixels:
    """Preprocessed pixels of the dataset rows, from a RAM cache or decoded by workers."""

    def __init__(self, sources: np.ndarray, preprocessor, min_side, num_workers: int, progress: bool):
        self.ds = RowDataset(sources, preprocessor, min_side)
        self.num_workers = num_workers
        self.progress = progress
        self.cache: torch.Tensor | None = None  # (n, 3, S, S) float16
        self.ok = np.ones(len(sources), bool)

    def _loader(self, rows: Sequence[int] | None = None, batch_size: int = 64, batch_sampler=None):
        from torch.utils.data import DataLoader, Subset

        ds = self.ds if rows is None else Subset(self.ds, list(rows))
        kw: dict[str, Any] = dict(num_workers=self.num_workers, collate_fn=_collate)
        if self.num_workers:
            kw.update(worker_init_fn=_worker_init, persistent_workers=batch_sampler is not None, prefetch_factor=4)
        if batch_sampler is not None:
            return DataLoader(ds, batch_sampler=batch_sampler, **kw)
        return DataLoader(ds, batch_size=batch_size, shuffle=False, **kw)

    def build_cache(self, batch_size: int = 64) -> None:
        """Decode + preprocess every row once; rows that fail are marked in :attr:`ok`."""
        from tqdm.auto import tqdm

        n = len(self.ds)
        cache = None
        self.ok[:] = False
        with tqdm(total=n, desc="cache images", unit="img", disable=not self.progress) as bar:
            for rows, px in self._loader(None, batch_size):
                if px is not None:
                    if cache is None:
                        cache = torch.empty((n, *px.shape[1:]), dtype=torch.float16)
                    cache[torch.from_numpy(rows)] = px.to(torch.float16)
                    self.ok[rows] = True
                bar.update(batch_size)
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
        for sub_rows, px in self._loader(rows.tolist(), batch_size):
            if px is not None:
                # Subset returns the original row numbers (the dataset yields its own index).
                yield sub_rows, px

    def train_batches(self, sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int, world: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Endless ``(rows, pixels)`` training batches; process ``rank`` of ``world`` takes every
        ``world``-th batch of the sampler (only those are decoded)."""
        mapped = MapBatches(sampler, rows, rank, world)
        loader = None
        epoch = 0
        while True:
            sampler.set_epoch(epoch)
            if self.cache is not None:
                for b in mapped:
                    r = np.asarray(b, np.int64)
                    r = r[self.ok[r]]
                    if len(r) >= 2:
                        yield r, self.cache[torch.from_numpy(r)].float()
            else:
                if loader is None:
                    loader = self._loader(None, batch_sampler=mapped)
                for r, px in loader:
                    if px is not None and len(r) >= 2:
                        yield r, px
            epoch += 1


def trunk_batches(sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int, world: int) -> Iterator[tuple[np.ndarray, None]]:
    """Endless training batches of row numbers only (the trunk cache supplies the inputs)."""
    mapped = MapBatches(sampler, rows, rank, world)
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for b in mapped:
            yield np.asarray(b, np.int64), None
        epoch += 1


class MapBatches:
    """Batch sampler: this process's share of the sampler's batches, positions mapped to dataset rows."""

    def __init__(self, sampler: CellGroupBatchSampler, rows: np.ndarray, rank: int = 0, world: int = 1):
        self.sampler, self.rows, self.rank, self.world = sampler, rows, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.sampler), self.world))

    def __iter__(self):
        for bi, b in enumerate(self.sampler):
            if bi % self.world == self.rank:
                yield self.rows[np.asarray(b)].tolist()


class TrunkCache:
    """Frozen-trunk outputs (float32) of the needed rows, plus mirrored images' for ``flip_rows``."""

    def __init__(self, enc, trunk, pixels: Pixels, rows: np.ndarray, flip_rows: np.ndarray | None, n_table: int, batch_size: int, progress: bool):
        from tqdm.auto import tqdm

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
                x = enc._to_device(px)
                t = trunk(x).float().cpu()
                if self.plain is None:
                    self.plain = torch.zeros((len(rows), *t.shape[1:]), dtype=torch.float32)
                    if flip_rows is not None:
                        self.flipped = torch.zeros_like(self.plain)
                idx = torch.from_numpy(self.pos[r])
                self.plain[idx] = t
                if self.flipped is not None:
                    fsel = want_flip[r]
                    if fsel.any():
                        self.flipped[idx[torch.from_numpy(fsel)]] = trunk(enc._to_device(px[torch.from_numpy(fsel)].flip(-1))).float().cpu()
                self.ok[r] = True
                bar.update(len(r))
        enc.model.train(was)
        if self.plain is None:
            raise TrainError("no image of the dataset could be decoded")

    def get(self, rows: np.ndarray, flip: torch.Tensor | None = None) -> torch.Tensor:
        idx = torch.from_numpy(self.pos[rows])
        x = self.plain[idx]
        if flip is not None and self.flipped is not None and bool(flip.any()):
            x = torch.where(flip.view(-1, *([1] * (x.ndim - 1))), self.flipped[idx], x)
        return x


def embed_rows_of(enc, pixels: Pixels, rows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``(len(rows), dim)`` (zeros where an image failed) and the ok mask."""
    pos = {int(r): i for i, r in enumerate(rows)}
    out = np.zeros((len(rows), enc.dim), np.float32)
    ok = np.zeros(len(rows), bool)
    for r, px in pixels.batches(rows, batch_size):
        idx = np.array([pos[int(x)] for x in r], np.int64)
        out[idx] = enc.embed_pixels(px)
        ok[idx] = True
    return out, ok
