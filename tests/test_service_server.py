"""The gRPC server against real clients on loopback: every RPC, health, reflection, limits, batching."""

from __future__ import annotations

import io
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# WTABRIDGE_TEST_MODEL points the tests at another export of the same contract.
MODEL = Path(os.environ.get("WTABRIDGE_TEST_MODEL", ROOT / "models" / "sortofclevr.onnx"))
if not MODEL.is_file():
    pytest.skip(f"model {MODEL} is missing; export one with python -m export", allow_module_level=True)

from reasoning.engine import Limits, ReasoningPool
from reasoning.facts import extraction_facts, render_facts
from service._proto import symbols_pb2 as pb
from service._proto import symbols_pb2_grpc as pb_grpc
from service.client import ServiceError, SymbolsClient
from service.inference import Extractor
from service.server import SERVICE_NAME, create_server
from service.settings import Settings
from training.worlds import SortOfClevrWorld

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --------------------------------------------------------------------------- helpers


def scenes(n: int, seed: int) -> np.ndarray:
    images, _ = SortOfClevrWorld(plain=1.0).sample(n, np.random.default_rng(seed))
    return images


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_same_objects(got, expected) -> None:
    """Same objects and values; confidences may differ in float rounding between batch sizes."""
    assert (got.width, got.height) == (expected.width, expected.height)
    assert [o.id for o in got.objects] == [o.id for o in expected.objects]
    for served, local in zip(got.objects, expected.objects):
        assert {k: a.value for k, a in served.attributes.items()} == {k: a.value for k, a in local.attributes.items()}
        for name, attribute in served.attributes.items():
            assert attribute.confidence == pytest.approx(local.attributes[name].confidence, abs=1e-4)


def settings(**overrides) -> Settings:
    values = {"model": MODEL, "host": "127.0.0.1", "port": 0, "provider": "cpu", "threads": 1}
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running(extractor, pool, **overrides):
    server, port = create_server(settings(**overrides), extractor=extractor, reasoning_pool=pool)
    server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor.load(MODEL, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def pool():
    with ReasoningPool(Limits(), workers=1) as shared:
        yield shared


@pytest.fixture(scope="module")
def served(extractor, pool):
    with running(extractor, pool, max_batch_delay_ms=10) as server_and_address:
        yield server_and_address


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(served[1]) as channel:
        yield pb_grpc.SymbolsStub(channel)


@pytest.fixture(scope="module")
def client(served):
    with SymbolsClient(served[1], timeout=20) as connection:
        yield connection


@pytest.fixture(scope="module")
def limited(extractor, pool):
    """A server with small limits, for the RESOURCE_EXHAUSTED cases."""
    with running(
        extractor,
        pool,
        max_message_bytes=65_536,
        max_pixels=1_000,
        max_query_images=2,
        max_program_bytes=200,
        solve_timeout_s=0.5,
    ) as server_and_address:
        yield server_and_address


# --------------------------------------------------------------------------- RPCs


def test_extract_matches_local_inference(stub, extractor):
    image = scenes(1, seed=1)[0]
    response = stub.Extract(pb.ExtractRequest(id="scene-1", image=png(image)), timeout=20)
    assert response.id == "scene-1"
    assert response.WhichOneof("result") == "extraction"
    assert response.extraction.image == "scene-1"

    from service.messages import extraction_from_proto

    served = extraction_from_proto(response.extraction)
    assert_same_objects(served, extractor.extract([image])[0])
    assert served.facts == render_facts(extraction_facts(served))
    assert "image_size(75,75)." in served.facts


def test_extract_assigns_missing_id(stub):
    response = stub.Extract(pb.ExtractRequest(image=png(scenes(1, seed=2)[0])), timeout=20)
    assert response.id
    assert response.extraction.image == response.id


def test_client_extract_returns_typed_result(client, extractor):
    image = scenes(1, seed=3)[0]
    served = client.extract(png(image), "typed")
    assert served.image == "typed"
    assert_same_objects(served, extractor.extract([image])[0])


def test_get_model_reports_provider_and_limits(client, extractor):
    info = client.get_model()
    assert info.provider == extractor.provider == "CPUExecutionProvider"
    assert info.model == MODEL.name
    assert info.world == extractor.symbol_table.world
    assert (info.input_width, info.input_height) == (extractor.width, extractor.height)
    assert info.symbol_table == extractor.symbol_table
    assert info.limits.max_message_bytes == Settings().max_message_bytes
    assert info.limits.max_batch_delay_ms == 10


def test_stream_keeps_ids_and_survives_bad_item(client, extractor):
    images = scenes(4, seed=4)
    items = [
        ("a", png(images[0])),
        ("b", png(images[1])),
        ("broken", b"\x89PNG\r\n\x1a\nnot really"),
        ("c", png(images[2])),
        ("d", png(images[3])),
    ]
    results = list(client.extract_stream(iter(items), timeout=30))

    assert [r.id for r in results] == ["a", "b", "broken", "c", "d"]
    assert not results[2].ok
    assert results[2].error_code == "INVALID_ARGUMENT"
    assert "broken" in results[2].error
    local = extractor.extract(list(images))
    for result, expected in zip([results[0], results[1], results[3], results[4]], local):
        assert result.ok
        assert_same_objects(result.extraction, expected)


def test_stream_numbers_items_without_id(stub):
    image = png(scenes(1, seed=5)[0])
    requests = [pb.ExtractRequest(image=image), pb.ExtractRequest(image=b""), pb.ExtractRequest(image=image)]
    responses = list(stub.ExtractStream(iter(requests), timeout=30))
    assert [r.id for r in responses] == ["0", "1", "2"]
    assert [r.WhichOneof("result") for r in responses] == ["extraction", "error", "extraction"]
    assert "empty" in responses[1].error.message


def test_query_runs_program_per_image(client, extractor):
    images = scenes(2, seed=6)
    program = "west_square(O) :- left_half(O), shape(O, square)."
    results = client.query([("p", png(images[0])), ("q", png(images[1]))], program)

    assert [r.extraction.image for r in results] == ["p", "q"]
    for result, local in zip(results, extractor.extract(list(images))):
        # left_half/1 needs a position, so both axes must have been decoded.
        expected = {
            f"west_square({o.id})"
            for o in local.objects
            if getattr(o.attributes.get("shape"), "value", None) == "square"
            and o.position is not None
            and 2 * o.position[0] < local.width
        }
        assert result.answer.satisfiable is True
        assert len(result.answer.models) == 1
        assert set(result.answer.models[0]) == expected
        assert result.extraction.facts == render_facts(extraction_facts(result.extraction))


def test_query_show_and_consequences(client):
    image = png(scenes(1, seed=7)[0])
    results = client.query([image], "{ pick(O) } :- object(O).", show=["pick/1"], consequences=True)
    answer = results[0].answer
    assert answer.satisfiable is True
    assert answer.certain == []
    assert len(answer.possible) == len(results[0].extraction.objects)


def test_query_reports_several_answer_sets(client):
    image = png(scenes(1, seed=8)[0])
    results = client.query([image], "1 { pick(O) : object(O) } 1.", models=0)
    answer = results[0].answer
    assert len(answer.models) == len(results[0].extraction.objects)
    assert answer.exhausted is True


def test_query_unsatisfiable_program(client):
    results = client.query([png(scenes(1, seed=9)[0])], ":- object(O).")
    assert results[0].answer.satisfiable is False
    assert results[0].answer.models == []


@pytest.mark.parametrize(
    ("program", "fragment"),
    [
        ("p(X) :- q.", "line 1, column 1"),
        ("p(.", "line 1"),
        ("#script (python)\ndef f(): pass\n#end.", "#script"),
        ('#include "/etc/passwd".', "#include"),
        ("p(@f(1)).", "@f"),
    ],
)
def test_query_bad_program_invalid_argument(client, program, fragment):
    with pytest.raises(ServiceError) as caught:
        client.query([png(scenes(1, seed=10)[0])], program)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details


def test_query_bad_show_and_no_images(stub):
    image = pb.ExtractRequest(id="x", image=png(scenes(1, seed=11)[0]))
    error = rpc_error(stub.Query, pb.QueryRequest(images=[image], program="a.", show=["a"]), timeout=20)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name/arity" in error.details()
    error = rpc_error(stub.Query, pb.QueryRequest(program="a."), timeout=20)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no images" in error.details()


# --------------------------------------------------------------------------- bad input and limits


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b""],
    ids=["text", "corrupt-png", "empty"],
)
def test_corrupt_image_invalid_argument(stub, data):
    error = rpc_error(stub.Extract, pb.ExtractRequest(id="bad-image", image=data), timeout=20)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad-image" in error.details()


def test_truncated_image_invalid_argument(stub):
    data = png(scenes(1, seed=12)[0])
    error = rpc_error(stub.Extract, pb.ExtractRequest(id="cut", image=data[: len(data) // 2]), timeout=20)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cut" in error.details()


def test_oversized_message_resource_exhausted(limited):
    request = pb.ExtractRequest(id="huge", image=b"\0" * 100_000)
    with grpc.insecure_channel(limited[1]) as channel:
        error = rpc_error(pb_grpc.SymbolsStub(channel).Extract, request, timeout=20)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536" in error.details()

    with SymbolsClient(limited[1]) as client, pytest.raises(ServiceError) as caught:
        client.extract(b"\0" * 100_000, "huge")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-message-bytes" in caught.value.details
    assert "65536" in caught.value.details


def test_pixel_limit_resource_exhausted(limited):
    with SymbolsClient(limited[1]) as client, pytest.raises(ServiceError) as caught:
        client.extract(png(scenes(1, seed=13)[0]), "wide")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-pixels" in caught.value.details
    assert "1000" in caught.value.details


def test_query_limits_resource_exhausted(limited):
    image = b"unused"  # the limits are checked before any image is decoded
    with SymbolsClient(limited[1]) as client:
        with pytest.raises(ServiceError) as caught:
            client.query([image, image, image], "a.")
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-query-images" in caught.value.details

        with pytest.raises(ServiceError) as caught:
            client.query([image], "a." + " " * 300)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-program-bytes" in caught.value.details


def test_solve_timeout_resource_exhausted(limited):
    # Twelve pigeons in eleven holes: tiny to ground, far too slow to refute in 0.5 s.
    program = "p(1..12). h(1..11). 1 { in(P, H) : h(H) } 1 :- p(P). :- in(P, H), in(Q, H), P < Q."
    image = np.full((40, 25, 3), 255, dtype=np.uint8)  # under the 1000-pixel limit of this server
    with SymbolsClient(limited[1], timeout=30) as client, pytest.raises(ServiceError) as caught:
        client.query([png(image)], program, show=["in/2"])
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--solve-timeout-s" in caught.value.details


def test_concurrent_rpc_limit(extractor, pool):
    image = png(scenes(1, seed=14)[0])
    with running(extractor, pool, max_concurrent_rpcs=1) as (_, address), grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SymbolsStub(channel)
        release = threading.Event()

        def requests():
            yield pb.ExtractRequest(id="first", image=image)
            release.wait(20)

        stream = stub.ExtractStream(requests(), timeout=30)
        assert next(stream).id == "first"  # the stream now occupies the only slot
        error = rpc_error(stub.Extract, pb.ExtractRequest(id="second", image=image), timeout=20)
        release.set()
        assert list(stream) == []
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cancelled_stream_frees_its_slot(extractor, pool):
    image = png(scenes(1, seed=17)[0])
    with running(extractor, pool, max_concurrent_rpcs=1) as (_, address), grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SymbolsStub(channel)
        release = threading.Event()

        def requests():
            yield pb.ExtractRequest(id="first", image=image)
            release.wait(20)

        stream = stub.ExtractStream(requests(), timeout=30)
        assert next(stream).id == "first"
        stream.cancel()
        release.set()

        # The cancellation reaches the server shortly after; until then the slot stays taken.
        for _ in range(50):
            try:
                response = stub.Extract(pb.ExtractRequest(id="after", image=image), timeout=20)
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.1)
        else:
            pytest.fail("the cancelled stream kept its slot for 5 s")
    assert response.id == "after"


def test_expired_deadline_dropped(extractor, pool):
    image = png(scenes(1, seed=15)[0])
    with (
        running(extractor, pool, max_batch_size=64, max_batch_delay_ms=1500) as (server, address),
        SymbolsClient(address) as client,
    ):
        with pytest.raises(ServiceError) as caught:
            client.extract(image, "late", timeout=0.3)
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

        waited = 0.0
        while server.batcher.stats().expired + server.batcher.stats().cancelled == 0 and waited < 10:
            time.sleep(0.1)
            waited += 0.1
        stats = server.batcher.stats()
        assert stats.expired + stats.cancelled == 1
        assert stats.images == 0

        # The server still serves requests whose deadline allows for the batch delay.
        assert client.extract(image, "patient", timeout=20).image == "patient"


def test_concurrent_clients_get_own_results(extractor, pool):
    images = scenes(16, seed=16)
    expected = extractor.extract(list(images))
    with running(extractor, pool, max_batch_size=16, max_batch_delay_ms=200) as (server, address):
        start = threading.Barrier(16)

        def call(index: int):
            with SymbolsClient(address, timeout=30) as client:
                client.wait_ready()
                start.wait(30)
                return client.extract(png(images[index]), f"client-{index}")

        with ThreadPoolExecutor(max_workers=16) as workers:
            results = list(workers.map(call, range(16)))
        stats = server.batcher.stats()

    for index, (result, local) in enumerate(zip(results, expected)):
        assert result.image == f"client-{index}"
        assert_same_objects(result, local)
    assert stats.images == 16
    assert stats.largest_batch > 1


def test_lone_request_runs_inline(extractor):
    from service.batching import MicroBatcher

    image = scenes(1, seed=17)[0]
    batcher = MicroBatcher(extractor, max_batch_size=16, max_batch_delay_ms=0.0)
    try:
        future = batcher.submit(image, "lone", inline=True)
        # The future is resolved before submit returns, because nothing was running or waiting.
        assert future.done()
        assert_same_objects(future.result(), extractor.extract([image])[0])
        stats = batcher.stats()
        assert (stats.batches, stats.images) == (1, 1)
    finally:
        batcher.close(5)


def test_busy_model_queues_requests(extractor):
    from service.batching import MicroBatcher

    images = scenes(6, seed=18)
    batcher = MicroBatcher(extractor, max_batch_size=16, max_batch_delay_ms=0.0)
    try:
        # Holding the model's lock acts as a batch in progress, so new requests must queue.
        with batcher._model:
            futures = [batcher.submit(image, f"queued-{index}", inline=True) for index, image in enumerate(images)]
            assert not any(future.done() for future in futures)
        results = [future.result(timeout=20) for future in futures]
        stats = batcher.stats()
    finally:
        batcher.close(5)
    for result, local in zip(results, extractor.extract(list(images))):
        assert_same_objects(result, local)
    assert stats.images == 6
    assert stats.largest_batch > 1


def test_queued_submits_share_batches(extractor):
    from service.batching import MicroBatcher

    images = scenes(32, seed=19)
    batcher = MicroBatcher(extractor, max_batch_size=16, max_batch_delay_ms=0.0)
    try:
        # The reader of an ExtractStream submits like this; its images must not run one by one.
        futures = [batcher.submit(image, f"streamed-{index}") for index, image in enumerate(images)]
        for future in futures:
            future.result(timeout=20)
        stats = batcher.stats()
    finally:
        batcher.close(5)
    assert stats.images == 32
    assert stats.batches < 32


# --------------------------------------------------------------------------- health and reflection


def test_health_transitions(extractor, pool):
    server, port = create_server(settings(), extractor=extractor, reasoning_pool=pool)
    server.start(load_model=False)
    address = f"127.0.0.1:{port}"
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            assert health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == NOT_SERVING

        error = rpc_error(pb_grpc.SymbolsStub(channel).GetModel, pb.GetModelRequest(), timeout=5)
        assert error.code() == grpc.StatusCode.UNAVAILABLE

        seen: list[int] = []
        first = threading.Event()

        def watch() -> None:
            try:
                for response in health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30):
                    seen.append(response.status)
                    first.set()
            except grpc.RpcError:
                pass  # the server ends the stream when it stops

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert first.wait(10)

        server.load_model()
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status == SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING

        server.stop(grace=1.0)
        watcher.join(10)
    assert seen == [NOT_SERVING, SERVING, NOT_SERVING]


def test_reflection_lists_service(served):
    with grpc.insecure_channel(served[1]) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
        ]
        listing, files = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))

    names = {service.name for service in listing.list_services_response.service}
    assert {"wtabridge.v1.Symbols", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    descriptor = descriptor_pb2.FileDescriptorProto.FromString(files.file_descriptor_response.file_descriptor_proto[0])
    assert descriptor.name == "wtabridge/v1/symbols.proto"
    assert [m.name for m in descriptor.service[0].method] == ["Extract", "ExtractStream", "Query", "GetModel"]


def test_client_reports_unreachable_server():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    with SymbolsClient(f"127.0.0.1:{port}", timeout=5) as client, pytest.raises(ServiceError) as caught:
        client.get_model()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(port) in caught.value.details


# --------------------------------------------------------------------------- program limits and faults

# Twelve pigeons in eleven holes: tiny to ground, far too slow to refute within the test limits.
SLOW_SOLVE = "p(1..12). h(1..11). 1 { in(P, H) : h(H) } 1 :- p(P). :- in(P, H), in(Q, H), P < Q."
# Grounding walks two billion values and keeps none of them: little memory, many seconds.
SLOW_GROUNDING = "q(X) :- X = 1..2000000000, X \\ 7 = 100."
# Grounding this needs gigabytes, far above a 128 MiB limit.
HUGE_GROUNDING = "p(X) :- X = 1..100000000."


@pytest.fixture(scope="module")
def strict(extractor, pool):
    """A server whose reasoning jobs get 2 s and 128 MiB."""
    with running(extractor, pool, solve_timeout_s=2.0, solve_memory_mib=128) as server_and_address:
        yield server_and_address


@pytest.mark.parametrize(
    ("program", "setting", "fragment"),
    [
        (HUGE_GROUNDING, "--solve-memory-mib", "memory limit of 128 MiB"),
        (SLOW_GROUNDING, "--solve-timeout-s", "wall-clock limit of 2 s"),
        (SLOW_SOLVE, "--solve-timeout-s", "wall-clock limit of 2 s"),
    ],
    ids=["huge-grounding", "slow-grounding", "endless-solve"],
)
def test_query_limit_then_next_query_works(strict, program, setting, fragment):
    image = png(scenes(1, seed=20)[0])
    with SymbolsClient(strict[1], timeout=60) as client:
        with pytest.raises(ServiceError) as caught:
            client.query([("blow-up", image)], program)
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert setting in caught.value.details
        assert fragment in caught.value.details
        assert "blow-up" in caught.value.details

        results = client.query([("after", image)], "ok.", show=["ok/0"])
    assert results[0].answer.models == [["ok"]]


@pytest.mark.parametrize(
    "program",
    ["#script (lua)\nfunction f() return 1 end\n#end.", '#include <incmode>.', 'a.\n#include "rules.lp".'],
    ids=["lua-script", "include-library", "include-file"],
)
def test_query_code_and_file_directives_rejected(client, program):
    with pytest.raises(ServiceError) as caught:
        client.query([png(scenes(1, seed=21)[0])], program)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not allowed" in caught.value.details
    assert "line " in caught.value.details


def test_query_external_directive_allowed(client):
    results = client.query([png(scenes(1, seed=22)[0])], "#external e. ok :- not e.", show=["ok/0"])
    assert results[0].answer.models == [["ok"]]


def test_query_unsafe_variable_names_rule(client):
    with pytest.raises(ServiceError) as caught:
        client.query([png(scenes(1, seed=23)[0])], "ok.\nfar(X) :- object(O).")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "line 2, column 1: unsafe variables in" in caught.value.details
    assert "far(X)" in caught.value.details


# --------------------------------------------------------------------------- slow clients and freed slots


def burst(address: str, count: int) -> list[grpc.StatusCode]:
    """Send `count` Extract calls at once and return each call's status code."""
    image = png(scenes(1, seed=30)[0])
    start = threading.Barrier(count)

    def call(index: int) -> grpc.StatusCode:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SymbolsStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            start.wait(10)
            try:
                stub.Extract(pb.ExtractRequest(id=f"burst-{index}", image=image), timeout=20)
            except grpc.RpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    with ThreadPoolExecutor(max_workers=count) as callers:
        return list(callers.map(call, range(count)))


def assert_slots_free(address: str, count: int) -> None:
    """Assert that `count` calls at once all succeed, retrying while ended calls release their slots."""
    for _ in range(50):
        codes = burst(address, count)
        if codes == [grpc.StatusCode.OK] * count:
            return
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        time.sleep(0.2)
    pytest.fail(f"a burst of {count} calls still got {codes} after 10 s; a handler thread stayed blocked")


def wait_until(condition, what: str, timeout: float = 20) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)
        waited += 0.05


@pytest.mark.parametrize("ending", ["deadline", "cancel"])
def test_stalled_stream_frees_slot(extractor, pool, ending):
    image = png(scenes(1, seed=31)[0])
    items = 6000  # about 12 MB of responses, more than HTTP/2 flow control buffers for a client that reads none
    with (
        running(extractor, pool, max_concurrent_rpcs=2) as (server, address),
        grpc.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.SymbolsStub(channel)
        release = threading.Event()

        def requests():
            for index in range(items):
                yield pb.ExtractRequest(id=str(index), image=image)
            release.wait(60)  # then silence: the client neither sends nor reads

        stream = stub.ExtractStream(requests(), timeout=15 if ending == "deadline" else 60)

        # Wait until the server stops processing: its handler is blocked sending responses.
        processed = -1
        for _ in range(60):
            current = server.batcher.stats().images
            if current == processed and current > 0:
                break
            processed = current
            time.sleep(1.0)
        assert 0 < processed < items, f"the server processed {processed} of {items} items; it never stalled"

        # The stalled stream takes one slot, but the other slot still serves calls.
        other = stub.Extract(pb.ExtractRequest(id="meanwhile", image=image), timeout=20)
        if ending == "cancel":
            stream.cancel()
        error = rpc_error(lambda: list(stream))
        release.set()

        assert other.id == "meanwhile"
        expected = grpc.StatusCode.DEADLINE_EXCEEDED if ending == "deadline" else grpc.StatusCode.CANCELLED
        assert error.code() == expected
        assert_slots_free(address, 2)


def test_slow_sender_stream_deadline_frees_slot(extractor, pool):
    image = png(scenes(1, seed=32)[0])
    with running(extractor, pool, max_concurrent_rpcs=1) as (_, address), grpc.insecure_channel(address) as channel:
        stub = pb_grpc.SymbolsStub(channel)
        release = threading.Event()

        def requests():
            yield pb.ExtractRequest(id="first", image=image)
            release.wait(30)

        stream = stub.ExtractStream(requests(), timeout=2)
        assert next(stream).id == "first"
        error = rpc_error(next, stream)
        release.set()

        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert_slots_free(address, 1)


@contextmanager
def one_worker_server(extractor, **overrides):
    """A server with its own single reasoning worker, so a test can occupy or kill it."""
    with ReasoningPool(Limits(), workers=1) as own_pool, running(extractor, own_pool, **overrides) as (_, address):
        yield own_pool, address


def start_slow_query(address: str, timeout: float = 60):
    channel = grpc.insecure_channel(address)
    image = pb.ExtractRequest(id="slow", image=png(scenes(1, seed=33)[0]))
    future = pb_grpc.SymbolsStub(channel).Query.future(
        pb.QueryRequest(id="slow-query", images=[image], program=SLOW_SOLVE, show=["in/2"]), timeout=timeout
    )
    return channel, future


def test_cancelled_query_frees_worker_and_slot(extractor):
    with one_worker_server(extractor, max_concurrent_rpcs=2, solve_timeout_s=60) as (own_pool, address):
        channel, future = start_slow_query(address)
        with channel:
            wait_until(lambda: own_pool.busy_pids() != [], "the slow job starting")
            busy = own_pool.busy_pids()
            future.cancel()
            # The solve limit is 60 s, so a free worker now means the cancellation killed the job.
            wait_until(lambda: own_pool.busy_pids() == [], "the cancelled job stopping")

        assert busy[0] not in own_pool.worker_pids()
        with SymbolsClient(address, timeout=20) as client:
            assert client.query([png(scenes(1, seed=34)[0])], "ok.", show=["ok/0"])[0].answer.models == [["ok"]]
        assert_slots_free(address, 2)


def test_query_waiting_for_worker_gets_deadline(extractor, caplog):
    with one_worker_server(extractor, max_concurrent_rpcs=3, solve_timeout_s=60) as (own_pool, address):
        channel, future = start_slow_query(address)
        with channel, SymbolsClient(address) as client:
            wait_until(lambda: own_pool.busy_pids() != [], "the slow job starting")
            with pytest.raises(ServiceError) as caught:
                client.query([("waiting", png(scenes(1, seed=35)[0]))], "ok.", timeout=1.5)
            # The blocked slow Query and a freed waiting one leave two slots for a burst.
            assert_slots_free(address, 2)
            future.cancel()

        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        logged = [r.getMessage() for r in caplog.records if "Query" in r.getMessage()]
        assert any("waiting" in m and "free reasoning worker" in m and "DEADLINE_EXCEEDED" in m for m in logged), logged
        assert_slots_free(address, 3)


def test_killed_worker_fails_only_its_query(extractor):
    with one_worker_server(extractor, solve_timeout_s=60) as (own_pool, address):
        channel, future = start_slow_query(address)
        with channel:
            wait_until(lambda: own_pool.busy_pids() != [], "the slow job starting")
            pid = own_pool.busy_pids()[0]
            os.kill(pid, signal.SIGKILL)
            error = future.exception(timeout=30)

        assert error.code() == grpc.StatusCode.INTERNAL
        assert f"reasoning worker {pid} was killed by signal SIGKILL" in error.details()
        assert "slow" in error.details()
        with SymbolsClient(address, timeout=20) as client:
            results = client.query([png(scenes(1, seed=36)[0])], "ok.", show=["ok/0"])
        assert results[0].answer.models == [["ok"]]
        assert pid not in own_pool.worker_pids()
