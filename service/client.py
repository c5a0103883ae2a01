"""A small Python client of the `wtabridge.v1.Symbols` service that returns pydantic results.

Failed calls raise `ServiceError`, which carries the gRPC status code and the server's
message. The client talks plaintext gRPC, as the server listens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc
from pydantic import BaseModel, Field

from reasoning.engine import Answer

from ._proto import symbols_pb2 as pb
from ._proto import symbols_pb2_grpc as pb_grpc
from .messages import ServedExtraction, answer_from_proto, extraction_from_proto
from .symbols import SymbolTable, parse_symbol_table

__all__ = [
    "DEFAULT_TIMEOUT",
    "ImageAnswer",
    "ModelInfo",
    "ServedExtraction",
    "ServerLimits",
    "ServiceError",
    "StreamItem",
    "SymbolsClient",
]

DEFAULT_TIMEOUT = 30.0  # seconds per call; streams get it per expected item, see extract_stream
# Query responses can contain many atoms; 64 MiB keeps a runaway response from exhausting memory.
MAX_RESPONSE_BYTES = 64 * 2**20

# gRPC core's text when a message passes grpc.max_receive_message_length.
_SIZE_LIMIT = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


class ServiceError(Exception):
    """A failed call: `code` is the gRPC status code and `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str, *, address: str) -> None:
        self.code = code
        self.details = details
        self.address = address
        super().__init__(f"{code.name}: {details}")

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError, address: str) -> ServiceError:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = (error.details() if hasattr(error, "details") else None) or str(error)
        size = _SIZE_LIMIT.search(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and size:
            details = (
                f"request of {size[1]} bytes is over the server's limit of {size[2]} bytes"
                " (server setting --max-message-bytes); send a smaller image"
            )
        elif code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
            details = f"cannot reach {address}: {details}"
        return cls(code, details, address=address)


class StreamItem(BaseModel):
    """One response of `extract_stream`: an extraction, or the error of that item."""

    id: str
    extraction: ServedExtraction | None = None
    error_code: str | None = Field(None, description="gRPC status code name, e.g. INVALID_ARGUMENT")
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.extraction is not None


class ImageAnswer(BaseModel):
    """Result of a query on one image: its extraction and the reasoning engine's answer."""

    extraction: ServedExtraction
    answer: Answer


class ServerLimits(BaseModel):
    max_message_bytes: int
    max_pixels: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_concurrent_rpcs: int
    max_query_images: int
    max_program_bytes: int
    solve_timeout_s: float
    solve_memory_mib: int
    max_answer_sets: int
    max_atoms: int


class ModelInfo(BaseModel):
    """Description of the served model, the execution provider in use and the server's limits."""

    model: str
    world: str
    input_width: int
    input_height: int
    provider: str
    symbol_table: SymbolTable
    limits: ServerLimits


def _show_entries(show: Sequence[str | tuple[str, int]]) -> list[str]:
    return [item if isinstance(item, str) else f"{item[0]}/{item[1]}" for item in show]


class SymbolsClient:
    """A connection to one server.

    Parameters
    ----------
    address
        "host:port" of the server.
    timeout
        Deadline of each call in seconds; None waits forever.
    """

    def __init__(self, address: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", MAX_RESPONSE_BYTES)]
        )
        self._stub = pb_grpc.SymbolsStub(self._channel)

    def __enter__(self) -> SymbolsClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout: float | None):
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as error:
            raise ServiceError.from_rpc_error(error, self.address) from None

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects; raise ServiceError (UNAVAILABLE) after `timeout` seconds."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach {self.address} within {timeout:g} s", address=self.address
            ) from None

    def extract(self, image: bytes | str | Path, name: str = "", *, timeout: float | None = None) -> ServedExtraction:
        """Extract the objects of one encoded image (bytes, or a path to read); `name` is its request id."""
        if not isinstance(image, bytes):
            path = Path(image)
            image, name = path.read_bytes(), name or str(path)
        response = self._call(self._stub.Extract, pb.ExtractRequest(id=name, image=image), timeout)
        return extraction_from_proto(response.extraction)

    def extract_stream(
        self, images: Iterable[tuple[str, bytes]], *, timeout: float | None = None
    ) -> Iterator[StreamItem]:
        """Extract a sequence of (id, encoded image) pairs over one stream, in order.

        `images` is read lazily, so it can be a generator over files. A bad image yields
        a StreamItem with `error` set and the stream goes on. `timeout` bounds the whole
        stream; None means no deadline, because a stream's length is not known up front.
        Raises ServiceError when the stream as a whole fails.
        """
        requests = (pb.ExtractRequest(id=image_id, image=data) for image_id, data in images)
        try:
            for response in self._stub.ExtractStream(requests, timeout=timeout):
                if response.WhichOneof("result") == "error":
                    yield StreamItem(id=response.id, error_code=response.error.code, error=response.error.message)
                else:
                    yield StreamItem(id=response.id, extraction=extraction_from_proto(response.extraction))
        except grpc.RpcError as error:
            raise ServiceError.from_rpc_error(error, self.address) from None

    def query(
        self,
        images: Sequence[bytes | tuple[str, bytes]],
        program: str,
        *,
        show: Sequence[str | tuple[str, int]] = (),
        models: int | None = None,
        consequences: bool = False,
        timeout: float | None = None,
    ) -> list[ImageAnswer]:
        """Solve `program` over the facts of each image; one ImageAnswer per image, in order.

        `images` are encoded images, optionally with an id each. `show` lists name/arity
        pairs ("answer/2" or ("answer", 2)). `models` is the number of answer sets per image
        (None: 1, 0: as many as the server allows). ServiceError with INVALID_ARGUMENT
        carries the program's error with its line and column.
        """
        request = pb.QueryRequest(program=program, show=_show_entries(show), consequences=consequences)
        for index, image in enumerate(images):
            image_id, data = image if isinstance(image, tuple) else (str(index), image)
            request.images.add(id=image_id, image=data)
        if models is not None:
            request.models = models
        response = self._call(self._stub.Query, request, timeout)
        return [
            ImageAnswer(extraction=extraction_from_proto(result.extraction), answer=answer_from_proto(result))
            for result in response.results
        ]

    def get_model(self, *, timeout: float | None = None) -> ModelInfo:
        """Describe the served model, the execution provider in use and the server's limits."""
        response = self._call(self._stub.GetModel, pb.GetModelRequest(), timeout)
        limits = {field: getattr(response.limits, field) for field in ServerLimits.model_fields}
        return ModelInfo(
            model=response.model,
            world=response.world,
            input_width=response.input_width,
            input_height=response.input_height,
            provider=response.provider,
            symbol_table=parse_symbol_table(response.symbol_table, f"{self.address} GetModel"),
            limits=ServerLimits(**limits),
        )
