"""Encode (and predict) the inputs of concurrent requests together, one batch at a time.

The encoders are not made to be called from many threads at once (a shared tokenizer, and two
cores that one forward pass already keeps busy). One worker thread takes whatever requests are
waiting, encodes them as one batch and, for predictions, runs the model once on all their rows:
under load, requests share a forward pass and a prediction instead of queueing for one each.

A request's failure (inputs that do not encode) is its own answer. A failure of the worker
itself is answered to the requests of that batch, logged, counted in ``failures`` and kept in
``problem`` until a batch goes through again; the worker goes on. A request cancelled while it
waits (its client gone, a shutdown) is skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from perennial.encoders.base import Encoder

__all__ = ["BatchingEncoder", "Predictor"]

logger = logging.getLogger("perennial.service")

#: ``predict(features, top)`` -> (model version, one row per input, as ``predict_detailed``).
Predictor = Callable[[NDArray[np.float32], int], tuple[int, list[dict[str, Any]]]]


@dataclass
class _Job:
    inputs: list[Any]
    top: int | None  # None: encode only
    future: Future[Any] = field(default_factory=Future)


class BatchingEncoder:
    """An encoder that many threads may call; it batches what they ask for.

    Parameters
    ----------
    encoder
        The encoder doing the work.
    max_rows
        Requests are joined into a batch until it holds this many inputs (a single larger
        request is encoded alone).
    predict
        What :meth:`submit` with a ``top`` runs on the features of a batch's predictions.

    Examples
    --------
    >>> from perennial.encoders import IdentityEncoder
    >>> batching = BatchingEncoder(IdentityEncoder())
    >>> batching.encode([[1.0, 2.0]]).tolist()
    [[1.0, 2.0]]
    >>> batching.close()
    """

    def __init__(self, encoder: Encoder, max_rows: int = 64, predict: Predictor | None = None):
        self.encoder = encoder
        self.max_rows = max_rows
        self.predict = predict
        #: Failures of the worker itself (not of a request's inputs), and the last one's reason
        #: while no batch has gone through since.
        self.failures = 0
        self.problem: str | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="perennial-encoder", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.encoder.name

    def submit(self, inputs: Any, top: int | None = None) -> Future[Any]:
        """A future of the features of ``inputs``, or with ``top``, of ``predict``'s answer."""
        job = _Job(list(inputs), top)
        self._jobs.put(job)
        return job.future

    def encode(self, inputs: Any) -> NDArray[np.float32]:
        """Features of ``inputs`` (blocks until they are computed)."""
        features: NDArray[np.float32] = self.submit(inputs).result()
        return features

    def close(self) -> None:
        """Stop the worker after the requests already queued; closing twice does nothing."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _work(self) -> None:
        carried: _Job | None = None
        while True:
            job = carried if carried is not None else self._jobs.get()
            carried = None
            if job is None:
                return
            jobs = [job]
            rows = len(job.inputs)
            stop = False
            while rows < self.max_rows:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                if rows + len(more.inputs) > self.max_rows:
                    carried = more
                    break
                jobs.append(more)
                rows += len(more.inputs)
            try:
                self._run(jobs)
            except Exception as error:
                logger.exception("the encoder's worker failed on a batch of %d requests", len(jobs))
                self.failures += 1
                self.problem = f"the encoder's worker failed on a batch: {error!r}"
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            else:
                self.problem = None
            if stop:
                return

    def _run(self, jobs: list[_Job]) -> None:
        # From here on a job's future cannot be cancelled; one cancelled already is skipped
        # (setting its result would raise, and once did end this thread).
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        encoded = self._encode(jobs)
        predictions = [(job, features) for job, features in encoded if job.top is not None]
        for job, features in encoded:
            if job.top is None:
                job.future.set_result(features)
        if predictions:
            self._predict(predictions)

    def _encode(self, jobs: list[_Job]) -> list[tuple[_Job, NDArray[np.float32]]]:
        """Each job with its features; jobs whose inputs failed get their error instead."""
        if len(jobs) > 1:
            try:
                features = self.encoder.encode([x for job in jobs for x in job.inputs])
            except Exception:
                pass  # one request's inputs broke the batch: encode each alone below
            else:
                done, start = [], 0
                for job in jobs:
                    done.append((job, features[start : start + len(job.inputs)]))
                    start += len(job.inputs)
                return done
        done = []
        for job in jobs:
            try:
                done.append((job, self.encoder.encode(job.inputs)))
            except BaseException as error:
                job.future.set_exception(error)
        return done

    def _predict(self, items: list[tuple[_Job, NDArray[np.float32]]]) -> None:
        if self.predict is None:
            for job, _ in items:
                job.future.set_exception(RuntimeError("this encoder was built without predict"))
            return
        if len(items) > 1:
            try:
                top = max(int(job.top or 1) for job, _ in items)
                version, rows = self.predict(np.vstack([f for _, f in items]), top)
            except Exception:
                pass  # e.g. features of another width in one request: predict each alone
            else:
                start = 0
                for job, features in items:
                    mine = rows[start : start + len(features)]
                    start += len(features)
                    for row in mine:  # rows are best first: fewer is a prefix
                        row["top"] = row["top"][: job.top]
                    job.future.set_result((version, mine))
                return
        for job, features in items:
            try:
                job.future.set_result(self.predict(features, int(job.top or 1)))
            except BaseException as error:
                job.future.set_exception(error)
