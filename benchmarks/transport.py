"""Time a minimal round trip over gRPC and over raw TCP, the floor under any served call.

    python -m benchmarks.transport [--calls N]

Three servers run in child processes on 127.0.0.1: a minimal threaded `grpc.server`, a
minimal `grpc.aio` server and a plain TCP socket. Each echoes a 400-byte payload, about
the size of a 75 x 75 Sort-of-CLEVR scene as PNG (294 to 473 bytes for 64 rendered
scenes). One client in this process sends N calls one after another to each server, and
the script prints one JSON object with the p50 latency of each in ms.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time
from concurrent import futures

from service.cli import ArgumentParser

PAYLOAD = b"x" * 400
SERVICE, METHOD = "wtabridge.bench.Echo", "Echo"


def _identity(data: bytes) -> bytes:
    return data


def _echo_handler(behaviour):
    import grpc

    method = grpc.unary_unary_rpc_method_handler(behaviour, _identity, _identity)
    return grpc.method_handlers_generic_handler(SERVICE, {METHOD: method})


def _threaded_server(ports) -> None:
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[_echo_handler(lambda data, _: data)])
    ports.put(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    server.wait_for_termination()


def _aio_server(ports) -> None:
    import grpc

    async def echo(data: bytes, _context) -> bytes:
        return data

    async def serve() -> None:
        server = grpc.aio.server(handlers=[_echo_handler(echo)])
        ports.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def _tcp_server(ports) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    connection, _ = listener.accept()
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := connection.recv(65536):
        connection.sendall(data)


def _grpc_p50(port: int, calls: int) -> float:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/{METHOD}")
        for _ in range(100):
            call(PAYLOAD, timeout=10)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call(PAYLOAD, timeout=10)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tcp_p50(port: int, calls: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            connection.sendall(PAYLOAD)
            received = 0
            while received < len(PAYLOAD):
                received += len(connection.recv(65536))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benchmarks.transport", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per server (default: 2000)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error(f"invalid --calls {args.calls}: use 1 or more")

    context = multiprocessing.get_context("spawn")
    results = {"calls": args.calls, "payload_bytes": len(PAYLOAD)}
    for name, target, measure in (
        ("grpc_threaded_p50_ms", _threaded_server, _grpc_p50),
        ("grpc_aio_p50_ms", _aio_server, _grpc_p50),
        ("tcp_p50_ms", _tcp_server, _tcp_p50),
    ):
        ports = context.Queue()
        server = context.Process(target=target, args=(ports,), daemon=True)
        server.start()
        try:
            results[name] = round(measure(ports.get(timeout=60), args.calls) * 1e3, 4)
        finally:
            server.kill()
            server.join()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
