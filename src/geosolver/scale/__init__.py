"""Scale-out: the Ray Data engine, torchrun/accelerate ranks, chunk-addressed stores, remote shards.

* :func:`geosolver.scale.ray_engine.embed_table_ray` — ``geosolver embed --engine ray``.
* :func:`geosolver.scale.ranks.embed_rank` — one rank of ``torchrun -m geosolver embed``.
* :mod:`geosolver.scale.chunks` — commit chunks from any process; :func:`merge_chunks`.
* :mod:`geosolver.scale.remote` — webdataset shards and ``tar://URL::MEMBER`` over fsspec.

Ray is optional (``pip install geosolver[scale]``); it is imported only by the Ray engine.
"""

from geosolver.scale.chunks import ChunkPlan, committed_chunks, merge_chunks, prepare_store, write_chunk
from geosolver.scale.ranks import embed_rank, rank_from_env

__all__ = ["ChunkPlan", "committed_chunks", "merge_chunks", "prepare_store", "write_chunk", "embed_rank", "rank_from_env"]
