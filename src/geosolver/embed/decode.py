"""The one decode path: image sources → preprocessed pixels, in DataLoader workers.

Local embedding, every distributed engine and training all read images through
:class:`ImageRows` + :func:`collate` + :func:`worker_init` (built by :func:`make_loader`), or,
for Ray's decode tasks, through :func:`load_pixels` per image. One bad image becomes an error
string for its row, never a crashed job.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from geosolver.images import open_image


def default_num_workers(device_type: str, training: bool = False) -> int:
    """Decode workers when none are given, for the process that feeds a model on ``device_type``.

    Embedding: up to 16 feeding a GPU, up to 4 (one core left) on a CPU. Training (``training``):
    up to 8 next to a GPU, at most 2 next to CPU training, whose own compute needs the cores.
    """
    n = os.cpu_count() or 1
    if training:
        return min(8, max(1, n - 1)) if device_type == "cuda" else min(2, max(0, n - 1))
    return min(16, max(1, n - 1)) if device_type == "cuda" else max(1, min(4, n - 1))


def load_pixels(source, preprocessor, min_side: int | None) -> np.ndarray:
    """Decode and preprocess one image source.

    Returns:
        float32 C-contiguous pixels as made by ``preprocessor`` (e.g. ``(3, S, S)``).

    Raises:
        Exception: anything decoding or preprocessing raised (callers record it per image);
            ``ValueError`` if preprocessing produced non-finite values.
    """
    px = np.ascontiguousarray(preprocessor(open_image(source, min_side=min_side)), dtype=np.float32)
    if not np.isfinite(px).all():
        raise ValueError("preprocessing produced non-finite values")
    return px


def error_text(e: BaseException) -> str:
    """How a per-image failure is recorded: ``"<ExceptionType>: <message>"``."""
    return f"{type(e).__name__}: {e}"


class ImageRows:
    """Map-style dataset over image sources: item ``i`` → ``(row, pixels or None, error or None)``.

    Args:
        sources: object array of image sources (paths, ``zip://``/``tar://`` members, URLs).
        preprocessor: picklable ``PIL.Image -> float32 array`` (an encoder's ``preprocessor``).
        min_side: shorter side the image needs before preprocessing (JPEG draft bound), or None.
        offset: added to ``i`` to give the row number (a slice of a larger table).
    """

    def __init__(self, sources: Sequence[Any] | np.ndarray, preprocessor, min_side: int | None, offset: int = 0):
        self.sources = sources
        self.preprocessor = preprocessor
        self.min_side = min_side
        self.offset = int(offset)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        try:
            return self.offset + int(i), load_pixels(self.sources[i], self.preprocessor, self.min_side), None
        except Exception as e:  # noqa: BLE001 — recorded per image, never fatal
            return self.offset + int(i), None, error_text(e)


class Decoded(NamedTuple):
    """One collated batch.

    Attributes:
        rows: int64 row numbers of every item in the batch, in batch order.
        ok_rows: int64 row numbers that decoded, in batch order.
        pixels: float32 tensor ``(len(ok_rows), ...)`` or ``None`` when nothing decoded.
        errors: ``(row, reason)`` for the items that failed.
    """

    rows: np.ndarray
    ok_rows: np.ndarray
    pixels: Any
    errors: list


def collate(items) -> Decoded:
    """``DataLoader`` collate for :class:`ImageRows` items."""
    import torch  # torch: optional heavy backend

    rows = np.array([it[0] for it in items], dtype=np.int64)
    ok = [it for it in items if it[1] is not None]
    pixels = torch.from_numpy(np.stack([it[1] for it in ok])) if ok else None
    ok_rows = np.array([it[0] for it in ok], dtype=np.int64)
    errors = [(int(it[0]), it[2]) for it in items if it[1] is None]
    return Decoded(rows, ok_rows, pixels, errors)


def worker_init(_worker_id: int) -> None:
    """One torch thread per decode worker (the workers are the parallelism)."""
    import torch  # torch: optional heavy backend

    torch.set_num_threads(1)


def make_loader(
    dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    batch_sampler=None,
    pin_memory: bool = False,
    persistent_workers: bool = False,
):
    """A ``DataLoader`` over :class:`ImageRows` (or a ``Subset`` of it) yielding :class:`Decoded`.

    Args:
        dataset: an :class:`ImageRows` or a ``torch.utils.data.Subset`` of one.
        batch_size: items per batch (ignored with ``batch_sampler``).
        num_workers: decode worker processes (0: decode in this process).
        batch_sampler: an iterable of index lists (training's cell-grouped sampler).
        pin_memory: pin batches for a CUDA device.
        persistent_workers: keep workers between epochs (an endless training stream).
    """
    from torch.utils.data import DataLoader  # torch: optional heavy backend

    kw: dict[str, Any] = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory)
    if num_workers:
        kw.update(worker_init_fn=worker_init, prefetch_factor=4, persistent_workers=persistent_workers)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kw)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **kw)
