"""Micro-batching: gather concurrent requests into one ONNX Runtime call and split the results.

Callers decode and resize their own image before `submit`, so an image that cannot be
decoded fails only its caller. One thread collects waiting requests until the batch holds
`max_batch_size` images or the first of them has waited `max_batch_delay_ms`, drops the
ones whose deadline has passed or whose caller has cancelled, and runs the rest together.
A second thread turns each batch's outputs into extractions and resolves the futures, so
that Python work overlaps the next ONNX Runtime call, which releases the GIL.

With a batch delay of 0, a unary request that finds no batch running and none waiting
runs at once on its caller's thread. A lone request then skips the handoffs to the two
threads and back; under load the model is rarely idle, so requests still gather into
batches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from .inference import Extractor
from .schema import Extraction

__all__ = ["BatchStats", "BatcherClosed", "DeadlineExpired", "MicroBatcher"]

log = logging.getLogger(__name__)


class DeadlineExpired(Exception):
    """The request's deadline passed before its batch ran, so it was dropped."""


class BatcherClosed(RuntimeError):
    """The batcher stopped before the request ran (the server is shutting down)."""


@dataclass
class BatchStats:
    """Counters since start; read them with `MicroBatcher.stats()`."""

    batches: int = 0  # ONNX Runtime calls
    images: int = 0  # images that ran
    largest_batch: int = 0
    expired: int = 0  # dropped because their deadline had passed
    cancelled: int = 0  # dropped because their caller had cancelled


@dataclass
class _Pending:
    image: np.ndarray  # uint8 [height, width, 3] at the model's input size
    size: tuple[int, int]  # the original (width, height)
    name: str
    deadline: float | None  # time.monotonic() value, None for no deadline
    future: Future = field(default_factory=Future)


_STOP = object()


class MicroBatcher:
    """Run concurrent `submit` calls on one `Extractor` in batches.

    Parameters
    ----------
    extractor
        The model; only the batcher thread calls its `run`.
    max_batch_size
        Maximum images in one run.
    max_batch_delay_ms
        Maximum time the first request of a batch waits for more to arrive. At 0 a batch
        holds only the requests already waiting when it starts.
    """

    def __init__(self, extractor: Extractor, *, max_batch_size: int, max_batch_delay_ms: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"invalid max_batch_size {max_batch_size}: at least 1 is needed")
        if max_batch_delay_ms < 0:
            raise ValueError(f"invalid max_batch_delay_ms {max_batch_delay_ms}: it cannot be negative")
        self.extractor = extractor
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay_ms / 1000.0
        self._queue: queue.Queue = queue.Queue()
        self._stats = BatchStats()
        self._lock = threading.Lock()
        self._closed = False
        # Held while a batch runs on the model; a request that finds it free and the queue
        # empty runs on its own thread.
        self._model = threading.Lock()
        # At most one batch waits for decoding while the next one runs, which bounds memory.
        self._decoded: queue.Queue = queue.Queue(maxsize=1)
        self._decoder = threading.Thread(target=self._decode_loop, name="micro-batcher-decode", daemon=True)
        self._decoder.start()
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray, name: str, deadline: float | None = None, *, inline: bool = False) -> Future:
        """Queue one decoded RGB uint8 image; the future resolves to its `Extraction`.

        `deadline` is a `time.monotonic()` value. The future raises DeadlineExpired when
        the deadline passes before the batch runs, and BatcherClosed after `close`.
        Cancelling the future before its batch runs drops the image.

        With `inline` and a batch delay of 0, an image that finds no batch running and
        none waiting runs on this thread before `submit` returns. A caller that submits
        many images in a row, such as the reader of a stream, leaves it off, because its
        images would then run one at a time.
        """
        pending = _Pending(
            image=self.extractor.prepare(image),
            size=(image.shape[1], image.shape[0]),
            name=name,
            deadline=deadline,
        )
        if inline and self.max_batch_delay == 0 and self._model.acquire(blocking=False):
            inline_run = None
            try:
                if self._queue.empty():
                    with self._lock:
                        if self._closed:
                            raise BatcherClosed("the server is shutting down")
                    live = self._admit([pending])
                    inline_run = (live, self._run_model(live) if live else None)
            finally:
                # Turning outputs into an extraction needs no model, so a batch may start meanwhile.
                self._model.release()
            if inline_run is not None:
                live, outputs = inline_run
                if outputs is not None:
                    self._resolve(live, outputs)
                return pending.future
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            self._queue.put(pending)
        return pending.future

    def stats(self) -> BatchStats:
        with self._lock:
            return BatchStats(**vars(self._stats))

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the batch that is running, and fail the ones still queued."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        started = time.monotonic()
        self._thread.join(timeout)
        # The batcher thread hands _STOP to the decoder after its last batch.
        remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        self._decoder.join(remaining)

    # ------------------------------------------------------------------ batcher thread

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            until = time.monotonic() + self.max_batch_delay
            while len(batch) < self.max_batch_size:
                remaining = until - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run(batch)
        self._fail_queued()
        self._decoded.put(_STOP)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosed("the server is shutting down"))

    def _admit(self, batch: list[_Pending]) -> list[_Pending]:
        """Drop cancelled and expired requests; mark the others as running."""
        now = time.monotonic()
        live = []
        expired = cancelled = 0
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                cancelled += 1
            elif item.deadline is not None and item.deadline <= now:
                expired += 1
                item.future.set_exception(DeadlineExpired(f"{item.name}: deadline passed before the image ran"))
            else:
                live.append(item)
        if expired or cancelled:
            log.info("dropped %d expired and %d cancelled requests before a batch", expired, cancelled)
        with self._lock:
            self._stats.expired += expired
            self._stats.cancelled += cancelled
        return live

    def _run(self, batch: list[_Pending]) -> None:
        live = self._admit(batch)
        if not live:
            return
        with self._model:
            outputs = self._run_model(live)
        if outputs is not None:
            self._decoded.put((live, outputs))

    def _run_model(self, live: list[_Pending]) -> dict[str, np.ndarray] | None:
        """Run one batch and count it, or fail its requests and return None. The caller must have acquired `_model`."""
        try:
            outputs = self.extractor.run(np.stack([item.image for item in live]))  # [n, H, W, 3] in
        except Exception as error:
            self._fail_batch(live, error)
            return None
        with self._lock:
            self._stats.batches += 1
            self._stats.images += len(live)
            self._stats.largest_batch = max(self._stats.largest_batch, len(live))
        return outputs

    def _fail_batch(self, live: list[_Pending], error: Exception) -> None:
        log.error(
            "batch of %d failed (requests %s): %s", len(live), ", ".join(item.name for item in live), error,
            exc_info=error,
        )
        for item in live:
            item.future.set_exception(error)

    # ------------------------------------------------------------------ decoder thread

    def _decode_loop(self) -> None:
        while True:
            entry = self._decoded.get()
            if entry is _STOP:
                return
            self._resolve(*entry)

    def _resolve(self, live: list[_Pending], outputs: dict[str, np.ndarray]) -> None:
        try:
            results: list[Extraction] = self.extractor.decode(
                outputs, [item.size for item in live], [item.name for item in live]
            )
        except Exception as error:
            self._fail_batch(live, error)
            return
        for item, result in zip(live, results):
            item.future.set_result(result)
