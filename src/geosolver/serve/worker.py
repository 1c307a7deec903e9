"""One thread owns the model: requests queue up, the worker runs them one batch at a time.

The encoder is not safe to call from several threads at once (and would only fight over the
same cores), so every request decodes and preprocesses its photo in the threadpool, hands the
model-ready pixels to :class:`ModelWorker` and waits on a future. The worker takes the oldest
request plus every other request already waiting (up to ``max_batch``), embeds their pixels in
**one** forward pass, then searches and aggregates per ``(k, strategy)`` group and looks up the
nearest populated place of every guess in one reverse-geocoder query (which also gives the guess's
country: the place is looked up once per answer, here, off the event loop). Nothing waits for a
batch to fill: a lone request runs at once, and concurrent requests share a forward pass
(micro-batching).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from geosolver.places import place_dicts

if TYPE_CHECKING:
    from geosolver.locate import Geolocator, Prediction
    from geosolver.serve.headmap import HeadMap

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """A located photo: the :class:`~geosolver.locate.Prediction` (its ``country`` set) and the
    nearest populated place of the guess (``{name, admin1, cc, km}``)."""

    prediction: "Prediction"
    place: dict
    head: dict | None = None  #: the served head's block (:mod:`geosolver.serve.headmap`), if any


@dataclass
class Job:
    """One photo to locate: preprocessed pixels ``(3, S, S)`` float32 and how to aggregate."""

    pixels: np.ndarray
    k: int
    strategy: str
    future: Future = field(default_factory=Future)


class ModelWorker:
    """Runs ``geolocator`` on queued :class:`Job` s in a single background thread.

    Args:
        geolocator: a :class:`geosolver.locate.Geolocator` (``encoder.embed_pixels`` +
            ``locate_embeddings``).
        max_batch: most images per encoder forward pass.
        headmap: a served location head: each answer gets its block, and with ``fuse`` the vote
            is fused with it.
    """

    def __init__(self, geolocator: "Geolocator", max_batch: int = 8, headmap: "HeadMap | None" = None):
        self.geolocator = geolocator
        self.headmap = headmap
        self.max_batch = max(1, int(max_batch))
        self._q: "queue.Queue[Job | None]" = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.batches_run = 0
        self.largest_batch = 0

    def submit(self, pixels: np.ndarray, k: int, strategy: str) -> Future:
        """Queue one preprocessed image (``encoder.preprocess(img)``, shape ``(3, S, S)``).

        Returns:
            A future resolving to the image's :class:`Answer`.
        """
        self._ensure_started()
        job = Job(pixels, k, strategy)
        self._q.put(job)
        return job.future

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="geosolver-model", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the jobs already queued."""
        with self._start_lock:
            t = self._thread
            if t is not None and t.is_alive():
                self._q.put(None)
                t.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(live))
        try:
            emb = self.geolocator.encoder.embed_pixels(np.stack([j.pixels for j in live]))
        except Exception as e:  # the whole batch failed: every request hears why
            log.exception("embedding a batch of %d images failed", len(live))
            for j in live:
                j.future.set_exception(e)
            return
        groups: dict[tuple[int, str], list[int]] = {}
        for i, j in enumerate(live):
            groups.setdefault((j.k, j.strategy), []).append(i)
        for (k, strategy), idx in groups.items():
            try:
                q = np.ascontiguousarray(emb[idx])
                hm = self.headmap
                preds = self.geolocator.locate_embeddings(q, k=k, strategy=strategy, with_country=False, prior=None if hm is None else hm.prior)
                found = place_dicts([p.lat for p in preds], [p.lon for p in preds])
                blocks = [None] * len(idx) if hm is None else hm.blocks(q)
            except Exception as e:
                for i in idx:
                    live[i].future.set_exception(e)
                continue
            for i, p, place, block in zip(idx, preds, found, blocks):
                p.country = place["cc"]
                live[i].future.set_result(Answer(p, place, block))
