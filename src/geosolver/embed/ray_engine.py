"""The Ray engine: a pool of actors, each holding one encoder, embeds whole chunks.

Each actor loads the encoder from its picklable :class:`~geosolver.encoders.EncoderSpec` (a GPU
per actor when the cluster has GPUs) and runs the same decode → embed step as every other engine
(:func:`geosolver.embed.chunks.iter_chunks`, with ``num_workers`` DataLoader decode processes
inside the actor). It returns the chunk's :class:`~geosolver.embed.chunks.ChunkOutput` to the
driver, which commits it — so the store directory need only be visible to the driver, and a
retried actor task cannot duplicate rows. Image sources must be readable from every Ray node
(a shared filesystem, or ``s3://``-style URLs through fsspec).

Ray is optional (``pip install 'geosolver[scale]'``) and imported only here.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from geosolver.embed.chunks import ChunkOutput, iter_chunks
from geosolver.embed.job import ChunkPlan
from geosolver.encoders import EncoderSpec
from geosolver.errors import EmbedError


class ChunkEmbedder:
    """The actor: one encoder; ``run(chunk)`` → :class:`ChunkOutput`.

    Args:
        spec: what to load.
        sources: object array of every table row's image source (the table's ``source``).
        plan: the job's chunk plan.
        batch_size, num_workers, tta: as :func:`geosolver.embed.embed`.
        threads: torch threads for a CPU actor (``None``: torch's default).
    """

    def __init__(self, spec: EncoderSpec, sources: np.ndarray, plan: ChunkPlan, batch_size: int, num_workers: int,
                 tta: str | None, threads: int | None = None):
        import torch  # torch: optional heavy backend

        if threads:
            torch.set_num_threads(int(threads))
        self.enc = spec.load()
        self.table = pd.DataFrame({"source": sources})
        self.plan, self.batch_size, self.num_workers, self.tta = plan, batch_size, num_workers, tta

    def run(self, chunk: int) -> ChunkOutput:
        return next(iter_chunks(self.table, self.plan, [chunk], self.enc, self.batch_size, self.num_workers, self.tta))


def run_chunks_on_ray(
    table: pd.DataFrame,
    plan: ChunkPlan,
    chunks: Sequence[int],
    spec: EncoderSpec,
    batch_size: int,
    num_workers: int,
    tta: str | None,
    ray_address: str | None = None,
    num_actors: int | None = None,
) -> Iterator[tuple[ChunkOutput, int]]:
    """Embed ``chunks`` on a Ray actor pool; yield ``(chunk output, actors)`` as chunks finish.

    Args:
        spec: the encoder; ``device="auto"`` becomes ``cuda`` on GPU actors and ``cpu`` otherwise.
        ray_address: ``ray.init`` address (``None``: start a local Ray unless one is running).
        num_actors: actors in the pool (default: the cluster's GPUs, else 1).
    """
    try:
        import ray  # ray: optional backend (--engine ray)
        from ray.util import ActorPool  # ray: optional backend (--engine ray)
    except ImportError:
        raise EmbedError("engine 'ray' needs Ray: pip install 'geosolver[scale]'") from None
    if not chunks:
        return
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    n_gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = spec.device != "cpu" and n_gpus > 0
    actors = int(num_actors or (n_gpus if use_gpu else 1))
    if actors < 1:
        raise EmbedError(f"ray actors must be >= 1, got {actors}")
    device = ("cuda" if use_gpu else "cpu") if spec.device == "auto" else spec.device
    remote = ray.remote(num_gpus=1 if use_gpu else 0, num_cpus=1, max_restarts=2, max_task_retries=2)(ChunkEmbedder)
    sources = ray.put(table["source"].to_numpy(dtype=object))
    pool = ActorPool([remote.remote(spec.on(device=device), sources, plan, batch_size, num_workers, tta)
                      for _ in range(min(actors, len(chunks)))])
    for out in pool.map_unordered(lambda a, c: a.run.remote(c), list(chunks)):
        yield out, actors
