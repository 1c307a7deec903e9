"""Dataset table → encoder → EmbeddingStore: the one embedding pipeline, resumable, on any engine.

::

    from geosolver.embed import embed
    res = embed(table, "streetclip", "stores/osv5m-test")                   # this process
    res = embed(table, spec, out, engine="ranks", rank=r, world_size=w)   # one torchrun rank
    res = embed(table, spec, out, engine="ray")                           # a Ray cluster

Every engine runs the same steps (:mod:`geosolver.embed.job`, :mod:`geosolver.embed.chunks`):
plan fixed input chunks (chunk ``c`` = rows ``[c·S, (c+1)·S)``), check the job's fingerprint
when resuming, run decode → embed → commit per chunk (the only place rows become a shard, through
:meth:`geosolver.store.StoreWriter.commit_chunk`), and merge the manifest in chunk order. Engines
only decide which process runs which chunk, so every engine writes the same store, and a killed
run — of any engine — resumes to the store an uninterrupted run writes.

* ``local``: this process; DataLoader workers decode, the manifest is merged after every chunk.
* ``ranks``: rank ``r`` of ``W`` (``torchrun`` / ``accelerate launch``, or ``--rank/--world-size``)
  runs chunks ``c ≡ r (mod W)``; rank 0 creates the store and merges once every chunk is in.
* ``ray``: a pool of Ray actors (a GPU each when the cluster has GPUs) each loads the encoder
  from its :class:`~geosolver.encoders.EncoderSpec` and embeds whole chunks; the driver commits
  the results, so ``out`` need only be visible to the driver.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pandas as pd

from geosolver.embed.chunks import ChunkOutput, commit, iter_chunks
from geosolver.embed.decode import default_num_workers, error_text, load_pixels
from geosolver.embed.job import DEFAULT_SHARD_SIZE, ChunkPlan, check_table, open_store, table_fingerprint
from geosolver.embed.ray_engine import run_chunks_on_ray
from geosolver.encoders import Encoder, EncoderSpec, load_encoder
from geosolver.errors import EmbedError, StoreError
from geosolver.progress import tqdm
from geosolver.store import EmbeddingStore, StoreWriter, read_manifest, write_lock

log = logging.getLogger(__name__)

#: the engines :func:`embed` runs (the CLI's ``--engine`` choices).
ENGINES = ("local", "ranks", "ray")

__all__ = [
    "DEFAULT_SHARD_SIZE", "ENGINES", "ChunkOutput", "ChunkPlan", "EmbedError", "EmbedJob", "EmbedResult", "default_num_workers",
    "embed", "error_text", "load_pixels", "merge", "rank_from_env", "table_fingerprint",
]


@dataclass
class EmbedResult:
    """What one :func:`embed` call did.

    Attributes:
        store: the store (complete unless this was a rank that does not merge).
        rows_embedded: images embedded by this call.
        failures: images this call could not read or embed.
        seconds: wall time of the embedding (not of loading the encoder).
        resumed_from: input rows that were already committed when the call started.
    """

    store: EmbeddingStore
    rows_embedded: int
    failures: int
    seconds: float
    resumed_from: int

    @property
    def images_per_s(self) -> float:
        return self.rows_embedded / self.seconds if self.seconds > 0 else float("nan")


def rank_from_env(env: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, or ``None``
    when not launched by torchrun/accelerate (or with a world of 1)."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise EmbedError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {e}") from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise EmbedError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world, local


def _rank_device(device: str, local_rank: int) -> str:
    """``auto`` on a rank → that rank's GPU (``cuda:LOCAL_RANK mod count``) when there are GPUs."""
    if device != "auto":
        return device
    import torch  # torch: optional heavy backend

    return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"


def embed(
    table: pd.DataFrame,
    encoder: Encoder | EncoderSpec | str,
    out: str | os.PathLike,
    *,
    engine: str = "local",
    batch_size: int = 64,
    num_workers: int | None = None,
    shard_size: int | None = None,
    tta: str | None = None,
    progress: bool = True,
    config: dict[str, Any] | None = None,
    skipped: pd.DataFrame | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    local_rank: int | None = None,
    merge_when_done: bool = True,
    wait_s: float = 24 * 3600.0,
    ray_address: str | None = None,
    ray_actors: int | None = None,
) -> EmbedResult:
    """Embed every row of a dataset table into the store at ``out`` (resuming it if present).

    Args:
        table: a dataset table from :func:`geosolver.data.read_dataset`: columns ``id``,
            ``source``, ``lat``, ``lon`` (degrees) and metadata, in a deterministic order.
        encoder: a loaded :class:`~geosolver.encoders.Encoder`, or the :class:`EncoderSpec` /
            name to load (ranks load it on their own GPU; Ray actors each load their own copy).
        out: store directory.
        engine: one of :data:`ENGINES`.
        batch_size: images per model call (>= 1).
        num_workers: DataLoader decode workers per process (default: by device; ``ranks`` and
            ``ray`` default to 0).
        shard_size: input rows per chunk/shard, fixed at creation (a resumed store keeps its own).
        tta: test-time augmentation for ``embed_pixels`` (``None``, ``"flip"``, ``"d4"``).
        progress: show a progress bar with images/s.
        config: the command/configuration to record in the manifest.
        skipped: rows the reader could not use (``id``, ``reason``), kept as ``skipped.parquet``.
        rank, world_size, local_rank: for ``engine="ranks"`` (default: from the environment).
        merge_when_done: ``ranks``: rank 0 waits for every chunk and merges the manifest.
        wait_s: ``ranks``: how long rank > 0 waits for the store, and rank 0 for the other ranks.
        ray_address: ``ray``: ``ray.init`` address (``None`` starts a local Ray unless one is running).
        ray_actors: ``ray``: embedding actors (default: the cluster's GPUs, else 1).

    Returns:
        :class:`EmbedResult` with the store and this call's statistics.

    Raises:
        EmbedError: bad settings, or a store started from another dataset, TTA or encoder.
    """
    if engine not in ENGINES:
        raise EmbedError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if int(batch_size) < 1:
        raise EmbedError(f"batch size must be >= 1, got {batch_size}")
    if num_workers is not None and int(num_workers) < 0:
        raise EmbedError(f"num_workers must be >= 0, got {num_workers}")
    job = EmbedJob(check_table(table), out, int(batch_size), num_workers, shard_size, tta, progress, config, skipped)
    if engine == "ranks":
        return _embed_ranks(job, encoder, rank, world_size, local_rank, merge_when_done, wait_s)
    with write_lock(out):  # one job per store: a second `embed` on the same --out gets one clear line
        if engine == "ray":
            return _embed_ray(job, encoder, ray_address, ray_actors)
        return _embed_local(job, encoder)


@dataclass(frozen=True)
class EmbedJob:
    """One :func:`embed` call's settings, what every engine receives (see :func:`embed` for each)."""

    table: pd.DataFrame
    out: str | os.PathLike
    batch_size: int = 64
    num_workers: int | None = None
    shard_size: int | None = None
    tta: str | None = None
    progress: bool = True
    config: dict[str, Any] | None = None
    skipped: pd.DataFrame | None = None

    def open(self, identity: dict, config: dict[str, Any] | None, **kw) -> tuple[StoreWriter, ChunkPlan]:
        """:func:`~geosolver.embed.job.open_store` for this job (``kw``: create, exclusive, wait_s)."""
        return open_store(self.out, identity, self.table, self.shard_size, self.tta, config, self.skipped, **kw)


#: an executor: ``(chunks, bar) -> ChunkOutput`` per chunk, in any order; it only chooses where a chunk runs.
Executor = Callable[[list, Any], Iterable[ChunkOutput]]


@dataclass
class _Tally:
    """What the driver loop did: embedded rows, failures, seconds."""

    rows: int = 0
    failures: int = 0
    seconds: float = 0.0

    def last_run(self, **extra) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "rows": self.rows, "failures": self.failures, **extra}

    def result(self, job: EmbedJob, store: EmbeddingStore, resumed_from: int) -> EmbedResult:
        if self.failures:
            log.warning("%d image(s) could not be embedded; see %s", self.failures, os.path.join(os.fspath(job.out), "failures.parquet"))
        return EmbedResult(store=store, rows_embedded=self.rows, failures=self.failures, seconds=self.seconds, resumed_from=resumed_from)


def _drive(job: EmbedJob, writer: StoreWriter, chunks: list, run: Executor, bar_total: int, bar_initial: int, desc: str,
           merge_each: bool = True, position: int | None = None) -> _Tally:
    """The one driver loop: ``run`` embeds ``chunks`` wherever it likes; each result is committed
    here as its shard (and the manifest merged after it when ``merge_each``)."""
    tally = _Tally()
    t0 = time.perf_counter()
    with _bar(bar_total, bar_initial, job.progress, desc, position) as bar:
        for res in run(chunks, bar):
            commit(writer, job.table, res)
            if merge_each:
                writer.merge()
            tally.rows += len(res.ok_rows)
            tally.failures += len(res.failures)
    tally.seconds = time.perf_counter() - t0
    return tally


def _in_process(job: EmbedJob, plan: ChunkPlan, enc: Encoder, workers: int) -> Executor:
    """Executor: this process decodes (``workers`` DataLoader workers) and embeds."""
    return lambda chunks, bar: iter_chunks(job.table, plan, chunks, enc, job.batch_size, workers, job.tta, bar)


def _embed_local(job: EmbedJob, encoder) -> EmbedResult:
    """This process runs every chunk still to do, merging the manifest after each."""
    enc = encoder if isinstance(encoder, Encoder) else load_encoder(encoder)
    workers = default_num_workers(enc.device.type) if job.num_workers is None else int(job.num_workers)
    writer, plan = job.open(enc.identity(), job.config)
    todo = [c for c in range(plan.n_chunks) if c not in writer.committed()]
    done_inputs = plan.n_inputs - plan.inputs(todo)
    if done_inputs:
        log.info("resuming %s: %d of %d input rows already committed", job.out, done_inputs, plan.n_inputs)
    tally = _drive(job, writer, todo, _in_process(job, plan, enc, workers), plan.n_inputs, done_inputs, "embed")
    store = writer.finalize(expect_chunks=plan.n_chunks, last_run=tally.last_run())
    return tally.result(job, store, done_inputs)


def _embed_ranks(job: EmbedJob, encoder, rank, world_size, local_rank, merge_when_done: bool, wait_s: float) -> EmbedResult:
    """Rank ``rank`` of ``world_size`` (arguments or torchrun's environment) embeds chunks
    ``c ≡ rank (mod world_size)`` on its own device; rank 0 merges."""
    if rank is None or world_size is None:
        env = rank_from_env()
        if env is None:
            raise EmbedError("engine 'ranks' needs rank and world_size (or RANK/WORLD_SIZE from torchrun)")
        rank, world_size, local_rank = env
    if not 0 <= rank < world_size:
        raise EmbedError(f"rank {rank} outside world size {world_size}")
    if not isinstance(encoder, Encoder):
        spec = encoder if isinstance(encoder, EncoderSpec) else EncoderSpec(str(encoder))
        encoder = load_encoder(spec.on(device=_rank_device(spec.device, rank if local_rank is None else local_rank)))
    world = int(world_size)
    cfg = {**(job.config or {}), "engine": "ranks", "world_size": world}
    writer, plan = job.open(encoder.identity(), cfg, create=rank == 0, exclusive=False, wait_s=wait_s)
    done = writer.committed()
    mine = [c for c in range(plan.n_chunks) if c % world == rank and c not in done]
    tally = _drive(job, writer, mine, _in_process(job, plan, encoder, job.num_workers or 0), plan.inputs(mine), 0,
                   f"embed rank {rank}/{world}", merge_each=False, position=rank)
    if rank == 0 and merge_when_done:
        deadline = time.monotonic() + wait_s
        while len(writer.committed()) < plan.n_chunks and time.monotonic() < deadline:
            time.sleep(0.5)
        store = writer.finalize(expect_chunks=plan.n_chunks, last_run=tally.last_run(world_size=world))
    else:
        store = EmbeddingStore(job.out)
    return tally.result(job, store, plan.inputs(done))


def _embed_ray(job: EmbedJob, encoder, ray_address, ray_actors) -> EmbedResult:
    """Ray actors embed whole chunks (each with its own encoder); the driver commits them."""
    spec = encoder.spec if isinstance(encoder, Encoder) else (encoder if isinstance(encoder, EncoderSpec) else EncoderSpec(str(encoder)))
    if spec is None:
        raise EmbedError("engine 'ray' needs an encoder loaded by load_encoder (or an EncoderSpec) so actors can load it")
    driver = encoder if isinstance(encoder, Encoder) else load_encoder(spec.on(device="cpu", precision="fp32"))
    writer, plan = job.open(driver.identity(), {**(job.config or {}), "engine": "ray"})
    todo = [c for c in range(plan.n_chunks) if c not in writer.committed()]
    actors = [0]

    def on_ray(chunks, bar):
        for res, n_actors in run_chunks_on_ray(job.table, plan, chunks, spec, job.batch_size, job.num_workers or 0, job.tta,
                                               ray_address, ray_actors):
            actors[0] = n_actors
            bar.update(res.hi - res.lo)
            yield res

    done_inputs = plan.n_inputs - plan.inputs(todo)
    tally = _drive(job, writer, todo, on_ray, plan.n_inputs, done_inputs, "embed (ray)")
    store = writer.finalize(expect_chunks=plan.n_chunks, last_run=tally.last_run(engine="ray", actors=actors[0]))
    return tally.result(job, store, done_inputs)


def merge(out: str | os.PathLike) -> EmbeddingStore:
    """Merge the chunks that ranks committed into the manifest (``geosolver embed --merge-only``).

    Raises:
        EmbedError: some chunk of the job is not committed yet (names the first few).
    """
    m = read_manifest(out)
    plan = ChunkPlan(int(m["config"]["n_inputs"]), int(m["config"]["shard_size"]))
    writer = StoreWriter(out, m["encoder"], exclusive=False)
    try:
        return writer.finalize(expect_chunks=plan.n_chunks)
    except StoreError as e:
        raise EmbedError(str(e)) from None


def _bar(total: int, initial: int, progress: bool, desc: str, position: int | None = None):
    return tqdm(total=total, initial=initial, unit="img", disable=not progress, dynamic_ncols=True, desc=desc, position=position)
