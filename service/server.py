"""The `wtabridge.v1.Symbols` gRPC server, with the standard health service and server reflection.

`create_server` builds and binds a server; `SymbolsServer.start` starts it and loads the
model, and only then reports SERVING. Every request error leaves through `context.abort`
with the status codes of the gRPC conventions and is logged with the request id.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reasoning.engine import ReasoningPool
from reasoning.errors import FactsError, JobStopped, LimitExceeded, ProgramError, ReasoningError
from reasoning.facts import extraction_facts, render_extraction_facts, render_facts
from reasoning.program import check_program

from ._proto import symbols_pb2 as pb
from ._proto import symbols_pb2_grpc as pb_grpc
from .batching import BatcherClosed, DeadlineExpired, MicroBatcher
from .cpus import usable_cpus
from .images import ImageError, PixelLimitError, load_image
from .inference import Extractor
from .messages import answer_to_proto, extraction_to_proto
from .schema import Extraction
from .settings import Settings, flag_name

__all__ = ["SERVICE_NAME", "SymbolsServer", "SymbolsServicer", "create_server"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Symbols"].full_name  # "wtabridge.v1.Symbols"

# The reasoning engine names its `Limits` fields in errors; these are the server settings behind them.
_LIMIT_SETTINGS = {
    "wall_seconds": "solve_timeout_s",
    "memory_mib": "solve_memory_mib",
    "program_bytes": "max_program_bytes",
    "max_models": "max_answer_sets",
    "max_atoms": "max_atoms",
}


class RequestFailed(Exception):
    """A request that cannot be served; carries the status code and the message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Model:
    extractor: Extractor
    batcher: MicroBatcher
    pool: ReasoningPool


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _deadline(context: grpc.ServicerContext) -> float | None:
    """Return the RPC's deadline as a `time.monotonic()` value, or None when it has none."""
    remaining = context.time_remaining()
    # Without a deadline, grpcio (1.85) reports a far-future time, about 9.2e18 seconds.
    if remaining is None or remaining > 10**9:
        return None
    return time.monotonic() + remaining


def _parse_show(items) -> list[tuple[str, int]] | None:
    if not items:
        return None
    signatures = []
    for item in items:
        name, slash, arity = item.rpartition("/")
        if not slash or not name or not arity.isdigit():
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT, f"invalid show entry {item!r}: expected name/arity, e.g. answer/2"
            )
        signatures.append((name, int(arity)))
    return signatures


class _StreamIntake:
    """Whether the reader of one ExtractStream may take another item from the client.

    Once the server stops, the handler closes the intake while the reader has no item in hand,
    so every item taken before is answered and none is taken after.
    """

    def __init__(self, stopping: threading.Event) -> None:
        self._lock = threading.Lock()
        self._stopping = stopping
        self._holding = False  # the reader has taken an item and not yet queued it
        self._closed = False

    def take(self) -> bool:
        """Mark an item as taken and return True, or return False once the intake is closed."""
        with self._lock:
            if self._stopping.is_set():
                self._closed = True
            if self._closed:
                return False
            self._holding = True
            return True

    def release(self) -> None:
        with self._lock:
            self._holding = False

    def close_if_idle(self) -> bool:
        """Close the intake unless the reader has an item in hand, and return whether it is closed."""
        with self._lock:
            if not self._holding:
                self._closed = True
            return self._closed


def _stream_drained(answered: int, last_id: str | None) -> RequestFailed:
    """Return the UNAVAILABLE status that ends a stream cut short by the server stopping."""
    if last_id is None:
        done = "no items were answered"
    else:
        done = f"{answered} items were answered, the last '{last_id}'"
    return RequestFailed(
        grpc.StatusCode.UNAVAILABLE,
        f"the server is shutting down: {done}; later items were not processed, send them again to another replica",
    )


class SymbolsServicer(pb_grpc.SymbolsServicer):
    """Handlers of the four RPCs; requests get UNAVAILABLE until `attach` gives them a model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model: _Model | None = None
        self._stopping = threading.Event()

    def attach(self, model: _Model) -> None:
        self._model = model

    def detach(self) -> None:
        """Reject new calls with UNAVAILABLE and make running streams stop taking items."""
        self._stopping.set()

    # ------------------------------------------------------------------ helpers

    def _ready(self) -> _Model:
        if self._stopping.is_set():
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if self._model is None:
            raise RequestFailed(
                grpc.StatusCode.UNAVAILABLE, "the model is still loading; retry when health reports SERVING"
            )
        return self._model

    def _fail(self, context: grpc.ServicerContext, method: str, request_id: str, failure: RequestFailed) -> NoReturn:
        """Log a failed request and end the RPC with its status (raises, as `context.abort` does)."""
        if failure.code == grpc.StatusCode.INTERNAL:
            log.error("%s %s failed: %s: %s", method, request_id, failure.code.name, failure.message)
        else:
            log.warning("%s %s failed: %s: %s", method, request_id, failure.code.name, failure.message)
        context.abort(failure.code, failure.message)

    def _decode(self, data: bytes, image_id: str):
        try:
            return load_image(data, max_pixels=self.settings.max_pixels, name=image_id)
        except PixelLimitError as error:
            raise RequestFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error} ({flag_name('max_pixels')})") from None
        except ImageError as error:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from None
        except Exception as error:
            log.warning("%s: image decoder raised %s", image_id, type(error).__name__, exc_info=True)
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"{image_id}: cannot decode image: {error}") from None

    def _submit(
        self, model: _Model, data: bytes, image_id: str, deadline: float | None, context=None, *, inline: bool = False
    ) -> futures.Future:
        """Decode an image and queue it for a batch; with `context`, the RPC's end cancels it.

        `inline` lets a lone image run on this thread when the model is idle (see `MicroBatcher.submit`).
        """
        image = self._decode(data, image_id)
        try:
            future = model.batcher.submit(image, image_id, deadline, inline=inline)
        except BatcherClosed:
            raise RequestFailed(
                grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
            ) from None
        if context is not None:
            # The callback runs when the RPC ends for any reason; after a result it does nothing.
            context.add_callback(future.cancel)
        return future

    @staticmethod
    def _wait(future: futures.Future, image_id: str, deadline: float | None) -> Extraction:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(timeout=timeout)
        except (futures.TimeoutError, DeadlineExpired):
            future.cancel()
            raise RequestFailed(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{image_id}: deadline passed before the image was processed"
            ) from None
        except futures.CancelledError:
            raise RequestFailed(grpc.StatusCode.CANCELLED, f"{image_id}: cancelled by the client") from None
        except BatcherClosed:
            raise RequestFailed(
                grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica"
            ) from None
        except Exception as error:  # noqa: BLE001 - an inference failure is reported to its callers
            raise RequestFailed(grpc.StatusCode.INTERNAL, f"{image_id}: inference failed: {error}") from None

    @staticmethod
    def _facts(extraction: Extraction) -> list:
        try:
            return extraction_facts(extraction)
        except FactsError as error:
            raise RequestFailed(
                grpc.StatusCode.INTERNAL, f"{extraction.image}: the model's symbols cannot be written as facts: {error}"
            ) from None

    def _extraction_message(self, extraction: Extraction) -> pb.Extraction:
        # The same text as render_facts(self._facts(...)), without a clingo symbol per fact.
        try:
            facts = render_extraction_facts(extraction)
        except FactsError as error:
            raise RequestFailed(
                grpc.StatusCode.INTERNAL, f"{extraction.image}: the model's symbols cannot be written as facts: {error}"
            ) from None
        return extraction_to_proto(extraction, facts)

    # ------------------------------------------------------------------ RPCs

    def Extract(self, request: pb.ExtractRequest, context: grpc.ServicerContext) -> pb.ExtractResponse:
        request_id = request.id or _new_id()
        try:
            model = self._ready()
            deadline = _deadline(context)
            future = self._submit(model, request.image, request_id, deadline, context, inline=True)
            extraction = self._wait(future, request_id, deadline)
            response = pb.ExtractResponse(id=request_id, extraction=self._extraction_message(extraction))
        except RequestFailed as failure:
            self._fail(context, "Extract", request_id, failure)
        return response

    def ExtractStream(self, request_iterator, context: grpc.ServicerContext):
        try:
            model = self._ready()
        except RequestFailed as failure:
            self._fail(context, "ExtractStream", "-", failure)
        deadline = _deadline(context)
        # A reader thread decodes and queues requests while earlier ones run, so that
        # the items of one stream share batches; the window bounds the read-ahead.
        window: queue.Queue = queue.Queue(maxsize=2 * self.settings.max_batch_size)
        ended = threading.Event()
        context.add_callback(ended.set)
        intake = _StreamIntake(self._stopping)
        reader = threading.Thread(
            target=self._read_stream,
            args=(model, request_iterator, window, ended, deadline, intake),
            name="extract-stream-reader",
            daemon=True,
        )
        reader.start()

        # Responses follow request order, so the count and id of the last answered item
        # tell a client whose stream ends early which of its items were not processed.
        answered = 0
        last_id: str | None = None
        try:
            while True:
                try:
                    entry = window.get(timeout=0.1)
                except queue.Empty:
                    if ended.is_set():
                        return  # the client cancelled or the deadline passed
                    if self._stopping.is_set() and intake.close_if_idle() and window.empty():
                        # The server is stopping and every item taken from the client is answered.
                        # The log names the stream by the item it stopped after; that item was answered.
                        position = f"(after {last_id or 'no item'})"
                        self._fail(context, "ExtractStream", position, _stream_drained(answered, last_id))
                    continue
                if entry is None:
                    return
                item_id, future, failure = entry
                if future is not None:
                    try:
                        extraction = self._wait(future, item_id, deadline)
                        answered, last_id = answered + 1, item_id
                        yield pb.ExtractResponse(id=item_id, extraction=self._extraction_message(extraction))
                        continue
                    except RequestFailed as error:
                        failure = error
                if failure.code == grpc.StatusCode.UNAVAILABLE:
                    self._fail(context, "ExtractStream", item_id, _stream_drained(answered, last_id))
                if failure.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                    # These end the whole stream, not one item.
                    self._fail(context, "ExtractStream", item_id, failure)
                log.warning("ExtractStream item %s failed: %s: %s", item_id, failure.code.name, failure.message)
                answered, last_id = answered + 1, item_id
                yield pb.ExtractResponse(
                    id=item_id, error=pb.ItemError(code=failure.code.name, message=failure.message)
                )
        finally:
            # Stop the reader and drop the images it queued that no one will read.
            ended.set()
            while True:
                try:
                    entry = window.get_nowait()
                except queue.Empty:
                    break
                if entry is not None and entry[1] is not None:
                    entry[1].cancel()

    def _read_stream(
        self, model, request_iterator, window: queue.Queue, ended: threading.Event, deadline, intake: _StreamIntake
    ) -> None:
        """Decode and queue each request of a stream into `window`, then None.

        Stops once `ended` is set, and stops without the None once `intake` closes.
        """

        def put(entry) -> bool:
            while not ended.is_set():
                try:
                    window.put(entry, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for index, request in enumerate(request_iterator):
                if not intake.take():
                    return  # the server is stopping; the handler ends the stream
                try:
                    item_id = request.id or str(index)
                    try:
                        entry = (item_id, self._submit(model, request.image, item_id, deadline), None)
                    except RequestFailed as failure:
                        entry = (item_id, None, failure)
                    if not put(entry):
                        return
                finally:
                    intake.release()
        except grpc.RpcError:
            pass  # the client cancelled or the deadline passed; the RPC is over
        except Exception:
            log.exception("ExtractStream: reading requests failed")
        put(None)

    def Query(self, request: pb.QueryRequest, context: grpc.ServicerContext) -> pb.QueryResponse:
        request_id = request.id or _new_id()
        try:
            model = self._ready()
            deadline = _deadline(context)
            response = self._query(model, request, request_id, deadline, context)
        except RequestFailed as failure:
            self._fail(context, "Query", request_id, failure)
        return response

    def _query(self, model: _Model, request: pb.QueryRequest, request_id: str, deadline, context) -> pb.QueryResponse:
        settings = self.settings
        if not request.images:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "the request has no images; add at least one")
        if len(request.images) > settings.max_query_images:
            raise RequestFailed(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(request.images)} images in one Query, over the limit of {settings.max_query_images}"
                f" ({flag_name('max_query_images')}); split the request",
            )
        show = _parse_show(request.show)
        models = request.models if request.HasField("models") else 1
        if models < 0:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid models {models}: use 0 for all answer sets or a positive count",
            )
        limits = settings.reasoning_limits()
        # Checking the program first keeps a bad program from costing any inference.
        self._reasoning_call(functools.partial(check_program, request.program, max_bytes=limits.program_bytes))

        ids = [image.id or str(index) for index, image in enumerate(request.images)]
        # Only a single image may run on this thread; several share a batch instead.
        pending = [
            self._submit(model, image.image, image_id, deadline, context, inline=len(ids) == 1)
            for image, image_id in zip(request.images, ids)
        ]
        extractions = [self._wait(future, image_id, deadline) for future, image_id in zip(pending, ids)]

        # The RPC's end (cancellation, deadline, or server stop after the grace period) stops
        # a job that waits for a free reasoning worker and kills the worker of a running one.
        ended = threading.Event()
        if not context.add_callback(ended.set):
            ended.set()  # the RPC has already ended
        response = pb.QueryResponse(id=request_id)
        for extraction in extractions:
            facts = self._facts(extraction)
            answer = self._reasoning_call(
                functools.partial(
                    model.pool.solve,
                    facts,
                    request.program,
                    show,
                    models=models,
                    consequences=request.consequences,
                    limits=limits,
                    deadline=deadline,
                    cancelled=ended,
                ),
                image_id=extraction.image,
            )
            response.results.append(answer_to_proto(answer, extraction_to_proto(extraction, render_facts(facts))))
        return response

    @staticmethod
    def _reasoning_call(call, *, image_id: str | None = None):
        prefix = f"{image_id}: " if image_id else ""
        try:
            return call()
        except ProgramError as error:
            raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, f"invalid program: {error}") from None
        except JobStopped as error:
            code = {
                "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
                "cancelled": grpc.StatusCode.CANCELLED,
            }.get(error.reason, grpc.StatusCode.UNAVAILABLE)
            if code == grpc.StatusCode.UNAVAILABLE:
                raise RequestFailed(code, "the server is shutting down; retry on another replica") from None
            raise RequestFailed(code, f"{prefix}{error}") from None
        except LimitExceeded as error:
            setting = _LIMIT_SETTINGS.get(error.limit)
            hint = f" (server setting {flag_name(setting)})" if setting else ""
            raise RequestFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{prefix}{error}{hint}") from None
        except ReasoningError as error:
            raise RequestFailed(grpc.StatusCode.INTERNAL, f"{prefix}reasoning failed: {error}") from None

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        try:
            model = self._ready()
        except RequestFailed as failure:
            self._fail(context, "GetModel", "-", failure)
        settings = self.settings
        extractor = model.extractor
        limits = settings.reasoning_limits()
        return pb.ModelInfo(
            model=extractor.path.name,
            world=extractor.symbol_table.world,
            input_width=extractor.width,
            input_height=extractor.height,
            provider=extractor.provider,
            symbol_table=extractor.symbol_table.to_json(),
            limits=pb.Limits(
                max_message_bytes=settings.max_message_bytes,
                max_pixels=settings.max_pixels,
                max_batch_size=settings.max_batch_size,
                max_batch_delay_ms=settings.max_batch_delay_ms,
                max_concurrent_rpcs=settings.max_concurrent_rpcs,
                max_query_images=settings.max_query_images,
                max_program_bytes=limits.program_bytes,
                solve_timeout_s=limits.wall_seconds,
                solve_memory_mib=limits.memory_mib,
                max_answer_sets=limits.max_models,
                max_atoms=limits.max_atoms,
            ),
        )


class SymbolsServer:
    """A bound gRPC server with its servicer and health state; see `create_server`."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        servicer: SymbolsServicer,
        health_servicer: health.HealthServicer,
        settings: Settings,
        port: int,
        *,
        extractor: Extractor | None = None,
        reasoning_pool: ReasoningPool | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        self.servicer = servicer
        self.health = health_servicer
        self.settings = settings
        self.port = port
        self._extractor = extractor
        self._pool = reasoning_pool
        self._owns_pool = reasoning_pool is None
        self._model: _Model | None = None
        self._stopped = threading.Event()

    @property
    def batcher(self) -> MicroBatcher | None:
        return self._model.batcher if self._model else None

    @property
    def extractor(self) -> Extractor | None:
        return self._model.extractor if self._model else None

    def start(self, *, load_model: bool = True) -> None:
        """Start the gRPC server, then load the model unless `load_model` is False.

        Health reports NOT_SERVING until the model is loaded. Raises ModelError (from
        `Extractor.load`) when the model or the requested provider cannot be used.
        """
        self.grpc_server.start()
        log.info("listening on %s:%d", self.settings.host, self.port)
        if load_model:
            self.load_model()

    def load_model(self) -> None:
        """Load the model, start the batcher and reasoning workers, and report SERVING."""
        settings = self.settings
        extractor = self._extractor
        if extractor is None:
            threads = settings.threads or usable_cpus()
            extractor = Extractor.load(settings.model, provider=settings.provider, threads=threads, spin=False)
            log.info("ONNX Runtime intra-op threads: %d", threads)
        log.info(
            "model %s (world %s) runs on %s; provider setting %s",
            extractor.path,
            extractor.symbol_table.world,
            extractor.provider,
            settings.provider,
        )
        batcher = MicroBatcher(
            extractor, max_batch_size=settings.max_batch_size, max_batch_delay_ms=settings.max_batch_delay_ms
        )
        if self._pool is None:
            self._pool = ReasoningPool(settings.reasoning_limits(), workers=settings.reasoning_workers)
        self._model = _Model(extractor=extractor, batcher=batcher, pool=self._pool)
        self.servicer.attach(self._model)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s", SERVICE_NAME)

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let running RPCs finish for `grace` seconds, then cancel the rest.

        Blocks until the server has stopped. `grace` defaults to the `grace_s` setting.
        """
        if self._stopped.is_set():
            return
        grace = self.settings.grace_s if grace is None else grace
        log.info("stopping: %.1f s grace for running RPCs", grace)
        self.health.enter_graceful_shutdown()
        # New RPCs are rejected from here on, and streams stop taking items and end once the
        # items they took are answered. Running RPCs keep their model until they end.
        self.servicer.detach()
        self.grpc_server.stop(grace).wait()
        if self._model is not None:
            self._model.batcher.close(timeout=5.0)
        if self._pool is not None and self._owns_pool:
            self._pool.close()
        self._stopped.set()
        log.info("stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until `stop` has finished or `timeout` passes; return True when stopped."""
        return self._stopped.wait(timeout)


def create_server(
    settings: Settings,
    *,
    extractor: Extractor | None = None,
    reasoning_pool: ReasoningPool | None = None,
) -> tuple[SymbolsServer, int]:
    """Build a server bound to `settings.host:settings.port` and return it with the bound port.

    Pass `extractor` or `reasoning_pool` to share them between servers, as tests do. The
    server then uses them instead of loading the model or starting reasoning workers, and
    it leaves a shared pool open when it stops. Call `start()` on the result to serve.
    """
    grpc_server = grpc.server(
        # Every RPC admitted under max_concurrent_rpcs gets a thread right away.
        futures.ThreadPoolExecutor(max_workers=settings.max_concurrent_rpcs, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared listener
        ],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    servicer = SymbolsServicer(settings)
    pb_grpc.add_SymbolsServicer_to_server(servicer, grpc_server)

    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)

    services = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(services, grpc_server)

    try:
        port = grpc_server.add_insecure_port(settings.address)
    except RuntimeError as error:
        raise OSError(f"cannot listen on {settings.address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot listen on {settings.address}; is the port in use?")
    server = SymbolsServer(
        grpc_server, servicer, health_servicer, settings, port, extractor=extractor, reasoning_pool=reasoning_pool
    )
    return server, port
