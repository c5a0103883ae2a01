"""Smoke tests of the gRPC benchmark section and the GPU script: they run and report sane numbers.

Speed is never asserted here; `python -m benchmarks` measures it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "sortofclevr.onnx"
if not MODEL.is_file():
    pytest.skip(f"model {MODEL} is missing; export one with python -m export", allow_module_level=True)


def run_module(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def assert_positive_finite(name: str, value) -> None:
    assert isinstance(value, (int, float)), f"{name} is {value!r}"
    assert math.isfinite(value), f"{name} is {value}"
    assert value > 0, f"{name} is {value}"


def test_grpc_section_quick(tmp_path):
    results = tmp_path / "results.json"
    page = ROOT / "docs" / "benchmarks.md"
    page_before = page.read_text() if page.exists() else None

    result = run_module("benchmarks", "--sections", "grpc", "--quick", "--results", str(results), "--no-page")

    # Exit status 1 means a target was not met, which a smoke test does not judge.
    assert result.returncode in (0, 1), result.stderr
    stored = json.loads(results.read_text())
    assert list(stored) == ["grpc"]
    section = stored["grpc"]
    assert section["run"]["quick"] is True

    comparisons = {c["name"]: c for c in section["comparisons"]}
    assert len(comparisons) == 9
    targets = sorted((c["target"], c["direction"]) for c in section["comparisons"] if c["target"] is not None)
    assert targets == [(0.8, "min"), (1.3, "max")]
    for comparison in section["comparisons"]:
        assert_positive_finite(comparison["name"], comparison["ratio"])
        assert comparison["measured"]
        assert comparison["met"] in (True, False, None)

    measurements = section["measurements"]
    for key in (
        "inprocess_batched_images_per_s",
        "inprocess_single_p50_ms",
        "grpc_single_client_p50_ms",
        "grpc_unbatched_single_client_p50_ms",
        "grpc_batched_images_per_s",
        "grpc_unbatched_images_per_s",
        "grpc_batched_server_cpu_ms_per_image",
        "grpc_batched_client_cpu_ms_per_image",
        "server_rss_after_load_model_mib",
        "server_peak_rss_mib",
        "health_check_cpu_ms_per_call",
        "inprocess_cpu_ms_per_image",
    ):
        assert_positive_finite(key, measurements[key])
    assert measurements["clients"] == 16
    assert measurements["objects_in_check_image"] > 0
    assert measurements["server_peak_rss_mib"] >= measurements["server_rss_after_load_model_mib"]
    # The latency bound adds the empty call to the in-process latency.
    floor = comparisons["gRPC floor: single-client Health/Check p50 vs in-process single-image latency"]["ratio"]
    bound = next(c["ratio"] for name, c in comparisons.items() if name.startswith("bound on the single-client"))
    assert bound == pytest.approx(1 + floor)
    # --no-page leaves the page alone.
    assert (page.read_text() if page.exists() else None) == page_before


def test_gpu_script_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = run_module("benchmarks.gpu", "--provider", "cpu", "--quick", "--batch-sizes", "1", "64", "--out", str(out))

    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert json.loads(result.stdout) == summary
    assert summary["provider"] == "cpu"
    assert "CPUExecutionProvider" in summary["session_providers"]
    assert summary["grpc"]["server_provider"] == "CPUExecutionProvider"
    assert sorted(summary["batches"]) == ["1", "64"]
    for size, timing in summary["batches"].items():
        assert timing["runs"] >= 1
        assert_positive_finite(f"batch {size} images/s", timing["images_per_s"])
        assert_positive_finite(f"batch {size} ms per batch", timing["mean_ms_per_batch"])
    assert summary["grpc"]["clients"] == 16
    assert summary["grpc"]["completed"] > 0
    assert_positive_finite("grpc images/s", summary["grpc"]["images_per_s"])
    assert_positive_finite("server peak RSS", summary["grpc"]["server_peak_rss_mib"])


def test_gpu_script_rejects_missing_cuda():
    onnxruntime = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA, so the script would run on it")

    result = run_module("benchmarks.gpu", "--provider", "cuda", "--quick")

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "cuda" in lines[0].lower()


def test_gpu_shell_script_syntax():
    result = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_transport_script_times_each_server():
    result = run_module("benchmarks.transport", "--calls", "20")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["calls"] == 20
    for key in ("grpc_threaded_p50_ms", "grpc_aio_p50_ms", "tcp_p50_ms"):
        assert_positive_finite(key, summary[key])


def test_batch_invariance_reports_only_confidences():
    result = run_module("benchmarks.batch_invariance", "--images", "64")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 64
    assert 0 <= summary["largest_probability_change"] < 1e-3
    assert summary["images_with_different_facts"] == len(summary["differences"])
    for difference in summary["differences"]:
        assert all(fact.startswith("confidence(") for fact in difference["alone"] + difference["batched"])
