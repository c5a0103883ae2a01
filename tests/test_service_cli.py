"""`python -m service` as a process: start-up, provider errors, and graceful stop on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
# WTABRIDGE_TEST_MODEL points the tests at another export of the same contract.
MODEL = Path(os.environ.get("WTABRIDGE_TEST_MODEL", ROOT / "models" / "sortofclevr.onnx"))
if not MODEL.is_file():
    pytest.skip(f"model {MODEL} is missing; export one with python -m export", allow_module_level=True)

from service._proto import symbols_pb2 as pb
from service._proto import symbols_pb2_grpc as pb_grpc
from service.client import SymbolsClient
from service.server import SERVICE_NAME


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("WTABRIDGE_")}


def server_command(*flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service",
        "--model",
        str(MODEL),
        "--port",
        "0",
        "--threads",
        "1",
        "--reasoning-workers",
        "1",
        *flags,
    ]


class ServerProcess:
    """A `python -m service` child whose stderr lines are read on a thread."""

    def __init__(self, *flags: str) -> None:
        self.process = subprocess.Popen(
            server_command(*flags), cwd=ROOT, env=clean_environment(), stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        expression = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s; log so far: {self.log}"
                ) from None
            self.log.append(line)
            found = expression.search(line)
            if found:
                return found

    def rest_of_log(self) -> str:
        while not self.lines.empty():
            self.log.append(self.lines.get_nowait())
        return "".join(self.log)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_server_gracefully(signum):
    server = ServerProcess("--provider", "cpu", "--grace-s", "2")
    try:
        port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1])
        server.wait_for(r"serving wtabridge\.v1\.Symbols")
        address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10
            )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with SymbolsClient(address, timeout=10) as client:
            assert client.get_model().provider == "CPUExecutionProvider"

        server.process.send_signal(signum)
        assert server.process.wait(timeout=30) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()
    log = server.rest_of_log()
    assert "runs on CPUExecutionProvider" in log
    assert f"received {signal.Signals(signum).name}" in log
    assert "stopping: 2.0 s grace" in log
    assert log.rstrip().endswith("stopped")
    assert "Traceback" not in log


def test_explicit_cuda_fails_without_gpu():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the failure path needs a CPU-only build")
    result = subprocess.run(
        server_command("--provider", "cuda"),
        check=False,
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "provider 'cuda' requested" in last
    assert "Traceback" not in result.stderr


def test_bad_model_file_fails_before_listening(tmp_path):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("not a model")
    result = subprocess.run(
        server_command("--model", str(bogus)), cwd=ROOT, env=clean_environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {bogus}: cannot load model")
    assert "listening" not in result.stderr


def start_server(*flags: str) -> tuple[ServerProcess, str]:
    server = ServerProcess("--provider", "cpu", *flags)
    port = int(server.wait_for(r"listening on 127\.0\.0\.1:(\d+)")[1])
    server.wait_for(r"serving wtabridge\.v1\.Symbols")
    return server, f"127.0.0.1:{port}"


def stop_process(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def test_sigterm_during_stream_names_last_item():
    image = (ROOT / "examples" / "sortofclevr.png").read_bytes()
    server, address = start_server("--grace-s", "20")
    sent: list[str] = []
    received: list = []
    signalled = threading.Event()

    def requests():
        for index in range(400):
            if index == 20:
                signalled.wait(30)
            sent.append(f"item-{index}")
            yield pb.ExtractRequest(id=sent[-1], image=image)
            if index >= 20:
                time.sleep(0.01)  # items keep coming while the server drains

    try:
        with grpc.insecure_channel(address) as channel:
            stream = pb_grpc.SymbolsStub(channel).ExtractStream(requests(), timeout=60)
            with pytest.raises(grpc.RpcError) as caught:
                for response in stream:
                    received.append(response)
                    if len(received) == 5:
                        server.process.send_signal(signal.SIGTERM)
                        signalled.set()
        # The stream ends once the items taken before the signal are answered, well before the grace period.
        exit_code = server.process.wait(timeout=15)
    finally:
        stop_process(server)

    ids = [response.id for response in received]
    assert exit_code == 0
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"{len(ids)} items were answered, the last '{ids[-1]}'" in caught.value.details()
    assert "later items were not processed" in caught.value.details()
    assert len(ids) >= 5
    assert ids == sent[: len(ids)]
    assert len(ids) < len(sent)
    assert all(response.WhichOneof("result") == "extraction" for response in received)
    assert "Traceback" not in server.rest_of_log()


def test_sigterm_stops_busy_reasoning_workers():
    image = (ROOT / "examples" / "sortofclevr.png").read_bytes()
    # Twelve pigeons in eleven holes: far longer to refute than the 120 s solve limit allows.
    slow = "p(1..12). h(1..11). 1 { in(P, H) : h(H) } 1 :- p(P). :- in(P, H), in(Q, H), P < Q."
    server, address = start_server("--solve-timeout-s", "120", "--grace-s", "2")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.SymbolsStub(channel)
            request = pb.QueryRequest(images=[pb.ExtractRequest(id="scene", image=image)], program=slow)
            solving = stub.Query.future(request, timeout=120)
            time.sleep(1.0)  # the only worker takes the first job
            waiting = stub.Query.future(request, timeout=120)
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            # After the 2 s grace the server cancels both calls, kills the running job and exits.
            exit_code = server.process.wait(timeout=30)
            errors = [solving.exception(timeout=10), waiting.exception(timeout=10)]
    finally:
        stop_process(server)

    assert exit_code == 0
    for error in errors:
        assert error is not None
        assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), error
    assert "Traceback" not in server.rest_of_log()
