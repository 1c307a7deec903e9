"""The Ray Data engine: ``geosolver embed --engine ray``.

Pipeline (streaming, one Ray Data dataset over the rows of the chunks still to do)::

    rows (row, source) ──map_batches(_decode_batch)──►  CPU tasks: open_image + enc.preprocessor
        ──map_batches(_EmbedActor, concurrency=N, num_gpus=1)──►  GPU (or CPU) actors hold the encoder
        ──map_batches(_ChunkWriter, concurrency=1)──►  commits each chunk as soon as all its rows arrived

The work is split into the local engine's fixed input chunks (chunk ``c`` = rows
``[c·S, (c+1)·S)``); the writer actor (pinned to the driver's node, so ``--out`` need only be
visible there) commits chunk ``c`` as shard ``shard-{c:05d}`` with the atomic temp + rename writes
of :mod:`geosolver.scale.chunks`, and the driver merges the manifest in chunk order at the end. A
retried task rewrites its own chunk's files under the same names (no duplicated rows); chunks
committed by a killed run are skipped on resume. The result is the store the local engine writes:
same shards, rows, order and failure records, embeddings equal up to float tolerance.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from geosolver.embed import EmbedError, EmbedResult
from geosolver.scale.chunks import (
    ChunkPlan,
    _check_table,
    chunk_meta,
    committed_chunks,
    merge_chunks,
    prepare_store,
    write_chunk,
)

log = logging.getLogger(__name__)


def _decode_batch(batch: dict[str, np.ndarray], preprocessor, min_side: int | None, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """CPU stage: sources → float32 pixels ``(n, *shape)``; a failed row gets zeros and its error."""
    from geosolver.embed import error_text, load_pixels

    n = len(batch["row"])
    pixels = np.zeros((n, *shape), np.float32)
    errors = np.full(n, "", dtype=object)
    for i, src in enumerate(batch["source"]):
        try:
            pixels[i] = load_pixels(str(src), preprocessor, min_side)
        except Exception as e:  # recorded as a failure, never fatal
            errors[i] = error_text(e)
    return {"row": np.asarray(batch["row"], np.int64), "pixels": pixels, "error": errors}


class _EmbedActor:
    """GPU (or CPU) stage: holds one encoder; ``(row, pixels, error)`` → ``(row, emb, error)``."""

    def __init__(self, model: str, device: str, precision: str, tta: str | None, threads: int | None):
        import torch

        from geosolver.encoders import load_encoder

        if threads:
            torch.set_num_threads(int(threads))
        self.enc = load_encoder(model, device=device, precision=precision)
        self.tta = tta

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        emb = np.zeros((len(ok), self.enc.dim), np.float32)
        if ok.any():
            emb[ok] = self.enc.embed_pixels(np.ascontiguousarray(batch["pixels"][ok]), tta=self.tta)
        return {"row": np.asarray(batch["row"], np.int64), "emb": emb, "error": np.asarray(batch["error"], dtype=object)}


class _ChunkWriter:
    """Last stage: buffers embedded rows per chunk, commits a chunk once all its inputs arrived.

    Emits one row per input row: ``committed`` is the chunk index a row completed, else -1.
    """

    def __init__(self, out: str, table: pd.DataFrame, n_inputs: int, shard_size: int):
        self.out = out
        self.table = table
        self.plan = ChunkPlan(n_inputs, shard_size)
        self.ids = table["id"].astype(str).to_numpy()
        self.buf: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self.seen: dict[int, int] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["row"], np.int64)
        chunks = rows // self.plan.shard_size
        committed = np.full(len(rows), -1, np.int64)
        for c in np.unique(chunks):
            sel = chunks == c
            c = int(c)
            self.buf.setdefault(c, []).append((rows[sel], batch["emb"][sel], np.asarray(batch["error"], dtype=object)[sel]))
            self.seen[c] = self.seen.get(c, 0) + int(sel.sum())
            lo, hi = self.plan.bounds(c)
            if self.seen[c] >= hi - lo:
                self._commit(c, lo, hi)
                committed[np.nonzero(sel)[0][-1]] = c
        return {"row": rows, "committed": committed}

    def _commit(self, c: int, lo: int, hi: int) -> None:
        parts = self.buf.pop(c)
        del self.seen[c]
        rows = np.concatenate([p[0] for p in parts])
        emb = np.concatenate([p[1] for p in parts])
        err = np.concatenate([p[2] for p in parts])
        order = np.argsort(rows, kind="stable")
        rows, emb, err = rows[order], emb[order], err[order]
        if len(rows) != hi - lo or (len(rows) and (rows[0] != lo or rows[-1] != hi - 1)) or len(np.unique(rows)) != len(rows):
            raise EmbedError(f"chunk {c}: got rows {rows[:3]}… ({len(rows)}) instead of exactly [{lo}, {hi})")
        ok = np.array([not e for e in err], dtype=bool)
        fails = [{"id": self.ids[r], "reason": e} for r, e in zip(rows[~ok], err[~ok])]
        write_chunk(self.out, c, emb[ok], chunk_meta(self.table, rows[ok]), fails, hi - lo)


def _pixel_shape(preprocessor) -> tuple[int, ...]:
    from PIL import Image

    return tuple(np.asarray(preprocessor(Image.new("RGB", (64, 64)))).shape)


def embed_table_ray(
    table: pd.DataFrame,
    encoder,
    model: str,
    out: str | os.PathLike,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    shard_size: int | None = None,
    tta: str | None = None,
    num_actors: int | None = None,
    ray_address: str | None = None,
    actor_threads: int | None = None,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    skipped: pd.DataFrame | None = None,
) -> EmbedResult:
    """Embed every row of ``table`` into the store at ``out`` on a Ray cluster (resuming it).

    Args:
        table: the reader table (``id, source, lat, lon, ...``); sources must be readable from
            every Ray worker (shared filesystem or ``s3://``-style URLs via fsspec).
        encoder: the encoder loaded on the driver (its identity, preprocessor and ``min_side``
            are used; the actors load their own copy of ``model``).
        model: what the actors pass to :func:`geosolver.encoders.load_encoder`.
        out: store directory on the driver's node.
        device: actors' device: ``auto`` (a GPU per actor when the cluster has GPUs), ``cpu``, ``cuda``.
        precision: actors' precision (``auto``, ``fp32``, ``fp16``, ``bf16``).
        batch_size: images per decode task batch and per model call.
        shard_size: input rows per chunk/shard for a new store (default 10 000).
        tta: test-time augmentation (``None``, ``flip``, ``d4``).
        num_actors: embedding actors (default: the cluster's GPUs, else 1).
        ray_address: ``ray.init`` address (``auto`` for a running cluster; ``None`` starts a
            local instance unless Ray is already initialised).
        actor_threads: torch threads per CPU actor (default: leave torch's default).
        progress: show a progress bar.
        config: command/configuration recorded in the manifest.
        skipped: reader-skipped rows kept as ``skipped.parquet``.

    Returns:
        :class:`~geosolver.embed.EmbedResult`; ``seconds`` covers the Ray pipeline (not ray.init).

    Raises:
        EmbedError: the store belongs to another dataset/TTA/encoder, or some chunk was lost
            (re-run to resume).
    """
    import ray
    from tqdm.auto import tqdm

    table = _check_table(table)
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    cfg = {**(config or {}), "engine": "ray"}
    plan = prepare_store(out, encoder.identity(), table, shard_size, tta, cfg, skipped)
    done = committed_chunks(out)
    todo = [c for c in range(plan.n_chunks) if c not in done]
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = device != "cpu" and n_gpus > 0
    actors = int(num_actors or (n_gpus if use_gpu else 1))
    t0 = time.perf_counter()
    n_rows = 0
    if todo:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        rows = np.concatenate([np.arange(*plan.bounds(c), dtype=np.int64) for c in todo])
        n_rows = len(rows)
        block = max(batch_size, 256)
        frames = [
            pd.DataFrame({"row": rows[s : s + block], "source": table["source"].to_numpy(dtype=object)[rows[s : s + block]].astype(str)})
            for s in range(0, len(rows), block)
        ]
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # chunks complete in order: the writer buffers little
        ctx.enable_progress_bars = False
        ds = ray.data.from_pandas(frames)
        ds = ds.map_batches(
            _decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=1,
            max_retries=3,  # a task-only setting: it also keeps decoding in CPU tasks (not fused into the actors)
            fn_kwargs={"preprocessor": encoder.preprocessor, "min_side": encoder.min_side, "shape": _pixel_shape(encoder.preprocessor)},
        )
        actor_device = ("cuda" if use_gpu else "cpu") if device == "auto" else device
        ds = ds.map_batches(
            _EmbedActor, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if use_gpu else 0, num_cpus=1,
            fn_constructor_kwargs={"model": str(model), "device": actor_device, "precision": precision, "tta": tta, "threads": actor_threads},
        )
        here = ray.get_runtime_context().get_node_id()
        ds = ds.map_batches(
            _ChunkWriter, batch_size=None, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0,
            ray_remote_args_fn=lambda: {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False)},
            fn_constructor_kwargs={"out": os.fspath(out), "table": table, "n_inputs": plan.n_inputs, "shard_size": plan.shard_size},
        )
        bar = tqdm(total=plan.n_inputs, initial=plan.n_inputs - n_rows, unit="img", disable=not progress, desc="embed (ray)")
        try:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(len(b["row"]))
        finally:
            bar.close()
    secs = time.perf_counter() - t0
    missing = [c for c in range(plan.n_chunks) if c not in committed_chunks(out)]
    if missing:
        raise EmbedError(f"{out}: chunk(s) {missing[:5]} were not committed (a worker died?); re-run the same command to resume")
    store = merge_chunks(out, {"last_run": {"seconds": round(secs, 3), "rows": n_rows, "engine": "ray", "actors": actors}})
    fails_now = int(store.failures["shard"].isin([f"shard-{c:05d}" for c in todo]).sum())
    return EmbedResult(store=store, rows_embedded=n_rows - fails_now, failures=fails_now, seconds=secs,
                       resumed_from=plan.n_inputs - n_rows)
