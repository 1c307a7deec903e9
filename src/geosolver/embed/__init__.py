"""The batch embedding pipeline: dataset table → encoder → EmbeddingStore, resumable.

Work is split into *chunks* of ``shard_size`` consecutive input rows; chunk ``c`` always covers
rows ``[c * shard_size, (c + 1) * shard_size)`` of the dataset table and becomes exactly one
shard (its successes) plus its failure records. A killed run therefore resumes at the first
row of the first uncommitted chunk, and the finished store is byte-for-byte the one an
uninterrupted run writes: same shards, same rows, same order.

Decoding and preprocessing run in DataLoader worker processes (the main process only moves
ready tensors to the device and runs the model under ``torch.inference_mode``); one bad image
becomes a failure record, never a crashed run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from geosolver.errors import EmbedError
from geosolver.images import open_image
from geosolver.store import EmbeddingStore, StoreWriter

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 10_000


def table_fingerprint(table: pd.DataFrame) -> str:
    """sha256 over the ordered ids of a dataset table: identifies what a store was built from."""
    h = hashlib.sha256()
    ids = table["id"].astype(str).to_numpy()
    for s in range(0, len(ids), 100_000):
        h.update("\n".join(ids[s : s + 100_000]).encode())
        h.update(b"\n")
    return h.hexdigest()


def check_same_job(first_config: dict, out, n_rows: int, fingerprint: str, tta: str | None) -> None:
    """Refuse to continue a store that was started from another dataset or with another ``tta``.

    Args:
        first_config: the ``config`` of the store's manifest (as written when it was created).
        out: the store path (for the message).
        n_rows, fingerprint: the current dataset table's length and :func:`table_fingerprint`.
        tta: the current test-time augmentation setting.
    """
    if first_config.get("ids_sha256") != fingerprint:
        raise EmbedError(
            f"{out} was started from another dataset ({first_config.get('n_inputs')} rows, ids sha256 "
            f"{str(first_config.get('ids_sha256'))[:12]}…) than this one ({n_rows} rows, {fingerprint[:12]}…); "
            "use a new --out or the same dataset and --limit"
        )
    if first_config.get("tta") != tta:
        raise EmbedError(f"{out} was started with tta={first_config.get('tta')!r}, not {tta!r}")


def load_pixels(source, preprocessor, min_side: int | None) -> np.ndarray:
    """Decode and preprocess one image source: the per-image work of every pipeline
    (local DataLoader workers, Ray decode tasks, training loaders).

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


class _ImageDataset:
    """Map-style dataset over (source) strings: decode + preprocess in the worker.

    Returns ``(index, pixels or None, error or None)``; errors are caught per item.
    """

    def __init__(self, sources: np.ndarray, preprocessor, min_side: int | None, offset: int):
        self.sources = sources
        self.preprocessor = preprocessor
        self.min_side = min_side
        self.offset = offset

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        try:
            return self.offset + i, load_pixels(self.sources[i], self.preprocessor, self.min_side), None
        except Exception as e:  # recorded as a failure, never fatal
            return self.offset + i, None, error_text(e)


def _collate(items):
    import torch

    idx = np.array([it[0] for it in items], dtype=np.int64)
    ok = [it for it in items if it[1] is not None]
    pixels = torch.from_numpy(np.stack([it[1] for it in ok])) if ok else None
    ok_idx = np.array([it[0] for it in ok], dtype=np.int64)
    errors = [(it[0], it[2]) for it in items if it[1] is None]
    return idx, ok_idx, pixels, errors


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


@dataclass
class EmbedResult:
    store: EmbeddingStore
    rows_embedded: int
    failures: int
    seconds: float
    resumed_from: int

    @property
    def images_per_s(self) -> float:
        return self.rows_embedded / self.seconds if self.seconds > 0 else float("nan")


def default_num_workers(device_type: str) -> int:
    n = os.cpu_count() or 1
    return min(16, max(1, n - 1)) if device_type == "cuda" else max(1, min(4, n - 1))


def embed_table(
    table: pd.DataFrame,
    encoder,
    out: str | os.PathLike,
    batch_size: int = 64,
    num_workers: int | None = None,
    shard_size: int | None = None,
    tta: str | None = None,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    skipped: pd.DataFrame | None = None,
) -> EmbedResult:
    """Embed every row of a dataset table into the store at ``out`` (resuming it if present).

    Args:
        table: a dataset table from :func:`geosolver.data.read_dataset`: columns ``id``,
            ``source``, ``lat``, ``lon`` (degrees) and metadata, in a deterministic order.
        encoder: a loaded :class:`geosolver.encoders.Encoder`.
        out: store directory.
        batch_size: images per model call.
        num_workers: DataLoader worker processes for decode + preprocess (0 = in process).
        shard_size: input rows per shard; fixed at creation (a resumed store keeps its own).
        tta: test-time augmentation passed to ``encoder.embed_pixels`` (``None``, ``"flip"``, ``"d4"``).
        progress: show a progress bar with images/s.
        config: the command/configuration to record in the manifest.
        skipped: rows the reader could not use (``id``, ``reason``), kept as ``skipped.parquet``.

    Returns:
        :class:`EmbedResult` with the finished store and run statistics.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    for col in ("id", "source", "lat", "lon"):
        if col not in table.columns:
            raise EmbedError(f"dataset table lacks column {col!r} (has {list(table.columns)})")
    table = table.reset_index(drop=True)
    fingerprint = table_fingerprint(table)
    cfg = dict(config or {})
    cfg.update({"n_inputs": int(len(table)), "ids_sha256": fingerprint, "tta": tta})
    writer = StoreWriter(out, encoder.identity(), config={**cfg, "shard_size": shard_size or DEFAULT_SHARD_SIZE})
    first = writer.manifest["config"]
    check_same_job(first, out, len(table), fingerprint, tta)
    shard_size = int(first["shard_size"])
    if skipped is not None and len(skipped):
        writer.record_skipped(skipped)
    start = writer.n_inputs_done
    if start:
        log.info("resuming %s at input row %d of %d (%d shards committed)", out, start, len(table), len(writer.shards))
    if start % shard_size and start < len(table):
        raise EmbedError(f"{out}: committed inputs ({start}) are not a whole number of shards of {shard_size}")

    device_type = getattr(encoder, "device", torch.device("cpu")).type
    workers = default_num_workers(device_type) if num_workers is None else int(num_workers)
    remaining = table.iloc[start:]
    ds = _ImageDataset(remaining["source"].to_numpy(dtype=object), encoder.preprocessor, encoder.min_side, offset=start)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device_type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )

    t0 = time.perf_counter()
    n_ok = n_fail = 0
    buf_rows: list[np.ndarray] = []
    buf_emb: list[np.ndarray] = []
    buf_fail: list[dict] = []
    chunk = start // shard_size
    ids = table["id"].astype(str).to_numpy()

    def flush(chunk_idx: int) -> None:
        lo, hi = chunk_idx * shard_size, min(len(table), (chunk_idx + 1) * shard_size)
        rows = np.concatenate(buf_rows) if buf_rows else np.zeros(0, np.int64)
        emb = np.concatenate(buf_emb) if buf_emb else np.zeros((0, encoder.dim), np.float32)
        meta = table.iloc[rows].reset_index(drop=True)
        writer.write_shard(emb, meta, failures=list(buf_fail), n_inputs=hi - lo)
        buf_rows.clear()
        buf_emb.clear()
        buf_fail.clear()

    bar = tqdm(total=len(table), initial=start, unit="img", disable=not progress, dynamic_ncols=True, desc="embed")
    try:
        for idx, ok_idx, pixels, errors in loader:
            emb = encoder.embed_pixels(pixels, tta=tta) if pixels is not None else np.zeros((0, encoder.dim), np.float32)
            fails = {i: why for i, why in errors}
            # a batch may straddle a shard boundary: route each row to its chunk
            for c in np.unique(idx // shard_size):
                while chunk < c:
                    flush(chunk)
                    chunk += 1
                sel = (ok_idx // shard_size) == c
                buf_rows.append(ok_idx[sel])
                buf_emb.append(emb[sel])
                buf_fail.extend({"id": ids[i], "reason": fails[i]} for i in idx[idx // shard_size == c] if i in fails)
            n_ok += len(ok_idx)
            n_fail += len(errors)
            for i, why in errors:
                log.debug("failed %s: %s", ids[i], why)
            bar.update(len(idx))
            bar.set_postfix(failed=n_fail)
        if start < len(table):
            flush(chunk)
    finally:
        bar.close()
    secs = time.perf_counter() - t0
    store = writer.finalize(last_run={"seconds": round(secs, 3), "rows": n_ok, "failures": n_fail})
    if n_fail:
        log.warning("%d image(s) could not be embedded; see %s", n_fail, os.path.join(os.fspath(out), "failures.parquet"))
    return EmbedResult(store=store, rows_embedded=n_ok, failures=n_fail, seconds=secs, resumed_from=start)
