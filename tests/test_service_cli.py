"""`python -m service` as a process: start-up, provider errors, and graceful stop on SIGTERM and SIGINT."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
# WTABRIDGE_TEST_MODEL points the tests at another export of the same contract.
MODEL = Path(os.environ.get("WTABRIDGE_TEST_MODEL", ROOT / "models" / "sortofclevr.onnx"))
if not MODEL.is_file():
    pytest.skip(f"model {MODEL} is missing; export one with python -m export", allow_module_level=True)

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
    assert result.returncode == 1
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
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {bogus}: cannot load model")
    assert "listening" not in result.stderr
