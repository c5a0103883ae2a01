"""gRPC section: the served model under concurrent unary load against the same work in process.

The server is the real `python -m service` in a subprocess on 127.0.0.1, so its resident
memory can be read from /proc. The load comes from this process, which shares the
machine's cores with the server, so it is kept cheap. It sends requests that were
serialized once up front over a raw-bytes method handle. It keeps CLIENTS calls in flight
with the asynchronous `future()` API (one completion callback per call, no thread per
client) and never parses a response during a timed window. Its CPU time is measured and
stored next to the server's.

Comparisons, all measured in this run:

- throughput at CLIENTS concurrent unary Extract calls with micro-batching on, against
  decoding the same PNG bytes and extracting them in process in batches of the server's
  maximum batch size;
- single-client p50 latency against in-process decode + extract of one image, with the
  server's default settings and again with `--max-batch-size 1`, where no request waits
  for others;
- throughput at CLIENTS clients with micro-batching on against a server with
  `--max-batch-size 1`;
- the server's peak resident memory (VmHWM) after the CLIENTS-client load against its
  resident memory once the model is loaded and before any request;
- the floor: `grpc.health.v1.Health/Check`, a call that does no work, at CLIENTS in flight
  and from one client, and two bounds derived from it. When the cores are the limit, no
  server serves more images/s than cores / (CPU per image in process + CPU per empty call),
  and no sequential call returns sooner than the in-process latency plus an empty call's.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import Comparison, Section, best_of, least_cpu, percentile

__all__ = ["CLIENTS", "ServerProcess", "closed_loop", "encoded_scenes", "run", "start_server"]

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 16
BATCH_SIZE = 16  # the server's default --max-batch-size
EXTRACT = "/wtabridge.v1.Symbols/Extract"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
# The command that starts the server; settings follow it as flags.
SERVER_COMMAND = [sys.executable, "-m", "service"]


# --------------------------------------------------------------------------- inputs


def encoded_scenes(count: int, seed: int = 0) -> list[bytes]:
    """Draw `count` Sort-of-CLEVR scenes (75 x 75) and encode each as PNG."""
    from PIL import Image

    from training.worlds import SortOfClevrWorld

    images, _ = SortOfClevrWorld(plain=1.0).sample(count, np.random.default_rng(seed))
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def serialized_requests(images: list[bytes]) -> list[bytes]:
    """Serialize one ExtractRequest per image, so that the load generator only sends bytes."""
    from service._proto import symbols_pb2 as pb

    return [pb.ExtractRequest(id=f"bench-{index}", image=data).SerializeToString() for index, data in enumerate(images)]


# --------------------------------------------------------------------------- the server process


@dataclass
class ServerProcess:
    """A `python -m service` subprocess listening on 127.0.0.1."""

    process: subprocess.Popen
    address: str
    log: list[str]  # stderr lines, collected by a reader thread

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory_kib(self) -> dict[str, int]:
        """Return VmRSS and VmHWM (peak resident set size) of the server process, in KiB."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values

    def cpu_seconds(self) -> float:
        """Return the user plus system CPU time of the server process so far, in seconds."""
        # Fields 14 and 15 of /proc/PID/stat; the command name in field 2 may contain spaces.
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 20.0) -> None:
        """Send SIGTERM and wait for the process to exit; kill it when it does not within `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    model: Path, *, provider: str = "cpu", timeout: float = 60.0, extra: list[str] | None = None
) -> ServerProcess:
    """Start `python -m service` on 127.0.0.1 with an ephemeral port and wait until health reports SERVING.

    `extra` contains further command-line settings, e.g. ["--max-batch-size", "1"].
    Raises RuntimeError with the server's last log lines when it exits or does not serve in time.
    """
    command = [
        *SERVER_COMMAND,
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", "0",
        "--provider", provider,
        "--log-level", "INFO",
        *(extra or []),
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    port_found = threading.Event()
    port: list[int] = []

    def read_log() -> None:
        for line in process.stderr:
            log.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match and not port:
                port.append(int(match[2]))
                port_found.set()

    threading.Thread(target=read_log, name="server-log", daemon=True).start()
    deadline = time.monotonic() + timeout
    while not port_found.wait(0.1):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"server did not start within {timeout:g} s: " + " | ".join(log[-5:]))
    server = ServerProcess(process, f"127.0.0.1:{port[0]}", log)
    try:
        _wait_serving(server.address, deadline)
    except RuntimeError:
        server.stop()
        raise
    return server


def _wait_serving(address: str, deadline: float) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise RuntimeError(f"server at {address} did not report SERVING in time")


# --------------------------------------------------------------------------- load generation


def extract_method(channel):
    """Return a unary Extract handle that sends and returns raw serialized bytes."""
    return channel.unary_unary(EXTRACT)


@dataclass
class LoadResult:
    completed: int
    failed: int
    seconds: float  # from the first call to the last completion
    client_cpu_seconds: float  # CPU time of this whole process over the window
    server_cpu_seconds: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.completed / self.seconds


def closed_loop(method, payloads: list[bytes], clients: int, seconds: float, *, timeout: float = 60.0) -> LoadResult:
    """Keep `clients` calls of `method` in flight for `seconds`; each completion starts the next call.

    Every call sends the next payload in turn. Failed calls are counted and not retried.
    Raises RuntimeError when the calls in flight do not finish within `timeout` after the window.
    """
    lock = threading.Lock()
    finished = threading.Event()
    state = {"next": 0, "completed": 0, "failed": 0, "in_flight": 0, "last": 0.0}
    stop_at = 0.0

    def launch() -> None:
        with lock:
            index = state["next"]
            state["next"] += 1
            state["in_flight"] += 1
        method.future(payloads[index % len(payloads)], timeout=timeout).add_done_callback(done)

    def done(future) -> None:
        now = time.perf_counter()
        ok = future.exception() is None and future.result()
        with lock:
            state["completed" if ok else "failed"] += 1
            state["in_flight"] -= 1
            state["last"] = now
            more = now < stop_at
            if not more and state["in_flight"] == 0:
                finished.set()
        if more:
            launch()

    cpu_start = time.process_time()
    start = time.perf_counter()
    stop_at = start + seconds
    for _ in range(clients):
        launch()
    if not finished.wait(seconds + timeout):
        raise RuntimeError(f"{state['in_flight']} calls still in flight {timeout:g} s after the load window")
    return LoadResult(
        completed=state["completed"],
        failed=state["failed"],
        seconds=state["last"] - start,
        client_cpu_seconds=time.process_time() - cpu_start,
    )


def measure_throughput(
    server: ServerProcess, payloads: list[bytes], *, seconds: float, repeats: int, clients: int = CLIENTS
) -> LoadResult:
    """Run a warm-up window, then `repeats` windows with `clients` calls in flight; return the fastest window."""
    import grpc

    with grpc.insecure_channel(server.address) as channel:
        method = extract_method(channel)
        closed_loop(method, payloads, clients, min(seconds, 1.0))
        best: LoadResult | None = None
        for _ in range(repeats):
            cpu_before = server.cpu_seconds()
            result = closed_loop(method, payloads, clients, seconds)
            result.server_cpu_seconds = server.cpu_seconds() - cpu_before
            if result.failed:
                raise RuntimeError(f"{result.failed} of {result.completed + result.failed} Extract calls failed under load")
            if best is None or result.images_per_s > best.images_per_s:
                best = result
    assert best is not None
    return best


def single_client_latencies(server: ServerProcess, payloads: list[bytes], count: int) -> list[float]:
    """Time `count` sequential Extract calls from one client, in seconds, after 10 untimed ones."""
    import grpc

    with grpc.insecure_channel(server.address) as channel:
        method = extract_method(channel)
        for index in range(10):
            method(payloads[index % len(payloads)], timeout=30)
        times = []
        for index in range(count):
            start = time.perf_counter()
            method(payloads[index % len(payloads)], timeout=30)
            times.append(time.perf_counter() - start)
    return times


@dataclass
class Floor:
    """The cost of a call that does no work, which every Extract call pays too."""

    calls_per_s: float  # Health/Check at CLIENTS in flight
    single_p50_s: float  # sequential calls from one client
    cpu_s_per_call: float  # server plus client CPU time per call at CLIENTS in flight


def health_floor(server: ServerProcess, calls: int, seconds: float) -> Floor:
    """Measure Health/Check: calls/s and CPU per call at `CLIENTS` in flight, and the single-client p50."""
    import grpc
    from grpc_health.v1 import health_pb2

    payload = health_pb2.HealthCheckRequest(service="").SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        method = channel.unary_unary("/grpc.health.v1.Health/Check")
        for _ in range(10):
            method(payload, timeout=30)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            method(payload, timeout=30)
            times.append(time.perf_counter() - start)
        closed_loop(method, [payload], CLIENTS, min(seconds, 1.0))
        server_cpu = server.cpu_seconds()
        load = closed_loop(method, [payload], CLIENTS, seconds)
        server_cpu = server.cpu_seconds() - server_cpu
    return Floor(
        calls_per_s=load.completed / load.seconds,
        single_p50_s=percentile(times, 50),
        cpu_s_per_call=(server_cpu + load.client_cpu_seconds) / load.completed,
    )


def check_response(server: ServerProcess, image: bytes) -> int:
    """Extract one image through the Python client and return its object count, to prove the server decodes."""
    from service.client import SymbolsClient

    with SymbolsClient(server.address, timeout=30) as client:
        return len(client.extract(image, "check").objects)


# --------------------------------------------------------------------------- in process


def inprocess_batched(extractor, images: list[bytes], batch_size: int, repeats: int) -> float:
    """Return the images/s of decoding the PNG bytes and extracting them in batches of `batch_size`."""
    from service.images import load_image

    def one_pass() -> None:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            extractor.extract([load_image(data) for data in chunk], [str(i) for i in range(len(chunk))])

    return len(images) / best_of(one_pass, repeats=repeats)


def inprocess_cpu_per_image(extractor, images: list[bytes], batch_size: int, repeats: int, passes: int = 4) -> float:
    """Return the least CPU time (all threads of this process) per image of decoding and extracting in batches.

    Each of the `repeats` measurements goes `passes` times over the images.
    """
    from service.images import load_image

    def run() -> None:
        for _ in range(passes):
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                extractor.extract([load_image(data) for data in chunk], [str(i) for i in range(len(chunk))])

    return least_cpu(run, repeats=repeats) / (passes * len(images))


def inprocess_single_latencies(extractor, images: list[bytes], count: int) -> list[float]:
    """Time `count` decode + extract calls of one image each, in seconds, after 10 untimed ones."""
    from service.images import load_image

    for index in range(10):
        extractor.extract([load_image(images[index % len(images)])])
    times = []
    for index in range(count):
        start = time.perf_counter()
        extractor.extract([load_image(images[index % len(images)])], ["one"])
        times.append(time.perf_counter() - start)
    return times


# --------------------------------------------------------------------------- the section


def run(args) -> Section:
    from service.cpus import usable_cpus
    from service.inference import Extractor

    quick = args.quick
    window_s, repeats = (0.5, 1) if quick else (4.0, 3)
    latency_calls = 30 if quick else 300
    inprocess_repeats = 2 if quick else 7
    threads = usable_cpus()

    images = encoded_scenes(64)
    payloads = serialized_requests(images)
    extractor = Extractor.load(args.model, provider="cpu", threads=threads)

    def inprocess() -> tuple[float, float]:
        batched = inprocess_batched(extractor, images, BATCH_SIZE, inprocess_repeats)
        single = percentile(inprocess_single_latencies(extractor, images, latency_calls), 50)
        return batched, single

    # In-process numbers are taken before and after the servers run and the better one is
    # kept, so that a slow spell during either does not favour the served numbers.
    batched_before, single_before = inprocess()
    # The CPU an image needs, measured with the server's ONNX Runtime settings: idle threads
    # sleep, so the time is work and not busy-waiting.
    sleeping = Extractor.load(args.model, provider="cpu", threads=threads, spin=False)
    image_cpu = inprocess_cpu_per_image(sleeping, images, BATCH_SIZE, inprocess_repeats)
    del sleeping

    server = start_server(args.model)
    try:
        objects = check_response(server, images[0])
        idle = server.memory_kib()
        single = percentile(single_client_latencies(server, payloads, latency_calls), 50)
        batched_load = measure_throughput(server, payloads, seconds=window_s, repeats=repeats)
        loaded = server.memory_kib()
        floor = health_floor(server, latency_calls, window_s)
    finally:
        server.stop()

    unbatched_server = start_server(args.model, extra=["--max-batch-size", "1"])
    try:
        # With one image per batch no request waits for others, so this is the latency without the batch delay.
        single_unbatched = percentile(single_client_latencies(unbatched_server, payloads, latency_calls), 50)
        unbatched_load = measure_throughput(unbatched_server, payloads, seconds=window_s, repeats=repeats)
    finally:
        unbatched_server.stop()

    batched_after, single_after = inprocess()
    inprocess_rate = max(batched_before, batched_after)
    inprocess_single = min(single_before, single_after)
    # No server can do better than the in-process work plus the empty call: in CPU time per
    # image when the cores are the limit, and in latency for one call after another.
    throughput_bound = threads / (image_cpu + floor.cpu_s_per_call)
    latency_bound = inprocess_single + floor.single_p50_s

    section = Section("grpc")
    section.comparisons = [
        Comparison(
            f"{CLIENTS} unary clients, micro-batching, vs in-process batches of {BATCH_SIZE}",
            batched_load.images_per_s / inprocess_rate,
            f"{batched_load.images_per_s:.0f} vs {inprocess_rate:.0f} images/s",
            target=0.8,
            direction="min",
        ),
        Comparison(
            "single-client p50 latency vs in-process decode + extract of one image",
            single / inprocess_single,
            f"{single * 1e3:.2f} vs {inprocess_single * 1e3:.2f} ms",
            target=1.3,
            direction="max",
        ),
        Comparison(
            "single-client p50 latency with --max-batch-size 1 (no batch delay) vs in-process",
            single_unbatched / inprocess_single,
            f"{single_unbatched * 1e3:.2f} vs {inprocess_single * 1e3:.2f} ms",
        ),
        Comparison(
            f"{CLIENTS} unary clients, micro-batching on vs off (--max-batch-size 1)",
            batched_load.images_per_s / unbatched_load.images_per_s,
            f"{batched_load.images_per_s:.0f} vs {unbatched_load.images_per_s:.0f} images/s",
        ),
        Comparison(
            f"gRPC floor: Health/Check calls/s at {CLIENTS} in flight vs in-process images/s",
            floor.calls_per_s / inprocess_rate,
            f"{floor.calls_per_s:.0f} calls/s vs {inprocess_rate:.0f} images/s",
        ),
        Comparison(
            "gRPC floor: single-client Health/Check p50 vs in-process single-image latency",
            floor.single_p50_s / inprocess_single,
            f"{floor.single_p50_s * 1e3:.2f} vs {inprocess_single * 1e3:.2f} ms",
        ),
        Comparison(
            f"bound on the {CLIENTS}-client ratio: {threads} cores / (CPU per image in process + CPU per Health/Check call)",
            throughput_bound / inprocess_rate,
            f"{threads} / ({image_cpu * 1e3:.3f} + {floor.cpu_s_per_call * 1e3:.3f} ms) = {throughput_bound:.0f}"
            f" vs {inprocess_rate:.0f} images/s",
        ),
        Comparison(
            "bound on the single-client p50 ratio: (in-process latency + Health/Check p50) / in-process latency",
            latency_bound / inprocess_single,
            f"{latency_bound * 1e3:.2f} vs {inprocess_single * 1e3:.2f} ms",
        ),
        Comparison(
            f"server peak RSS (VmHWM) under {CLIENTS}-client load vs RSS after model load",
            loaded["VmHWM"] / idle["VmRSS"],
            f"{loaded['VmHWM'] / 1024:.0f} vs {idle['VmRSS'] / 1024:.0f} MiB",
        ),
    ]
    section.measurements = {
        "clients": CLIENTS,
        "server_max_batch_size": BATCH_SIZE,
        "onnxruntime_threads": threads,
        "load_window_s": window_s,
        "load_windows": repeats,
        "latency_calls": latency_calls,
        "objects_in_check_image": objects,
        "inprocess_batched_images_per_s": round(inprocess_rate, 1),
        "inprocess_batched_images_per_s_before": round(batched_before, 1),
        "inprocess_batched_images_per_s_after": round(batched_after, 1),
        "inprocess_single_p50_ms": round(inprocess_single * 1e3, 3),
        "grpc_single_client_p50_ms": round(single * 1e3, 3),
        "grpc_unbatched_single_client_p50_ms": round(single_unbatched * 1e3, 3),
        "grpc_batched_images_per_s": round(batched_load.images_per_s, 1),
        "grpc_unbatched_images_per_s": round(unbatched_load.images_per_s, 1),
        "grpc_batched_server_cpu_ms_per_image": round(1e3 * batched_load.server_cpu_seconds / batched_load.completed, 3),
        "grpc_batched_client_cpu_ms_per_image": round(1e3 * batched_load.client_cpu_seconds / batched_load.completed, 3),
        "grpc_unbatched_server_cpu_ms_per_image": round(
            1e3 * unbatched_load.server_cpu_seconds / unbatched_load.completed, 3
        ),
        "health_check_calls_per_s": round(floor.calls_per_s, 1),
        "health_check_single_client_p50_ms": round(floor.single_p50_s * 1e3, 3),
        "health_check_cpu_ms_per_call": round(floor.cpu_s_per_call * 1e3, 4),
        "inprocess_cpu_ms_per_image": round(image_cpu * 1e3, 4),
        "server_rss_after_load_model_mib": round(idle["VmRSS"] / 1024, 1),
        "server_peak_rss_mib": round(loaded["VmHWM"] / 1024, 1),
        "server_rss_after_load_mib": round(loaded["VmRSS"] / 1024, 1),
    }
    client_share = batched_load.client_cpu_seconds / (batched_load.client_cpu_seconds + batched_load.server_cpu_seconds)
    section.notes = [
        f"The load generator shares the {threads} cores with the server; it took {100 * client_share:.0f}% of the CPU"
        f" time of the {CLIENTS}-client window (client and server together)."
    ]
    return section
