"""faiss plumbing shared by the index modules: the faiss import, threads, GPUs, query checks,
faiss' C++ messages, and streaming a store without keeping its mapped pages resident."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import sys
import tempfile

import numpy as np

from geosolver.errors import IndexBuildError
from geosolver.store import EmbeddingStore

log = logging.getLogger(__name__)


def faiss_module():
    """faiss, imported on first use (optional heavy backend: the CLI's parser must not load it)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # no "Loading faiss with AVX2" chatter
    import faiss  # faiss: optional heavy backend

    return faiss


def set_threads(n: int | None) -> None:
    """Set the number of OpenMP threads faiss uses (``None`` leaves faiss' default)."""
    if n is not None:
        if n < 1:
            raise IndexBuildError(f"threads must be >= 1, got {n}")
        faiss_module().omp_set_num_threads(int(n))


def num_gpus() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    f = faiss_module()
    return int(f.get_num_gpus()) if hasattr(f, "get_num_gpus") else 0


def as_queries(q: np.ndarray, dim: int) -> np.ndarray:
    """``(n, dim)`` finite float32 C-contiguous queries (a single vector becomes one row)."""
    q = np.asarray(q)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise IndexBuildError(f"queries must have shape (n, {dim}), got {q.shape}")
    if not np.isfinite(q).all():
        raise IndexBuildError("queries contain NaN or inf")
    return np.ascontiguousarray(q, dtype=np.float32)


def release_pages(store: EmbeddingStore) -> None:
    """Drop the store's memory-mapped shard pages from this process (``MADV_DONTNEED``): the data
    stays in the page cache, but no longer counts in the process' resident memory."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None:
        return
    for mm in list(getattr(store, "_mm", {}).values()):  # the shards opened so far (opening one scans it)
        m = getattr(mm, "_mmap", None)
        base = mm.base
        while m is None and base is not None:  # a view of the memmap: find the mmap object
            m = base if isinstance(base, mmap.mmap) else getattr(base, "_mmap", None)
            base = getattr(base, "base", None)
        if isinstance(m, mmap.mmap):
            with contextlib.suppress(OSError, ValueError):
                m.madvise(advice)


def iter_batches(store: EmbeddingStore, batch_size: int):
    """``store.iter_batches`` (float32 batches) that releases the mapped pages after every batch."""
    for off, batch in store.iter_batches(batch_size=batch_size):
        yield off, batch
        release_pages(store)


_FAISS_FEW_POINTS = re.compile(r"WARNING clustering (\d+) points to (\d+) centroids: please provide at least (\d+) training points")


@contextlib.contextmanager
def summarised_faiss_warnings(what: str):
    """Capture what faiss prints from C++ on fd 2 (one "please provide at least N training points"
    line per k-means run: 64 for 64 PQ sub-quantisers) and log one summary line instead; other
    lines are passed on once each."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to tidy
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            few, other = [], []
            for line in text.splitlines():
                m = _FAISS_FEW_POINTS.search(line)
                if m:
                    few.append(tuple(int(g) for g in m.groups()))
                elif line.strip() and line not in other:
                    other.append(line)
            if other:
                sys.stderr.write("\n".join(other) + "\n")
                sys.stderr.flush()
            if few:
                pts, k, want = min(few)
                log.warning(
                    "%s: %d k-means run(s) had fewer training points than faiss recommends (%d points for %d centroids; "
                    "%d wanted): fine for a small store, but codebooks trained on more rows give better recall",
                    what, len(few), pts, k, want,
                )


def faiss_error(e: BaseException) -> str:
    """The informative tail of a faiss C++ error (``Error in <signature> at file.cpp:N: <what>``)."""
    msg = " ".join(str(e).split())
    m = re.search(r"\.(?:cpp|h):\d+: (.*)$", msg)
    text = m.group(1) if m else msg
    text = re.sub(r"^Error: '.*?' failed: ", "", text)
    return text[:200]
