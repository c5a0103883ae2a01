"""Smoke test of `python -m benchmarks --quick`: the sections run and store well-formed ratios.

Speed is never asserted here; the ratios only have to be positive finite numbers.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = ["inference", "batch", "reasoning"]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    results = tmp_path_factory.mktemp("bench") / "results.json"
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    # A missing dev set makes the reasoning section render its own scenes.
    command = [sys.executable, "-m", "benchmarks", "--sections", *SECTIONS, "--quick", "--results", str(results)]
    command += ["--no-page", "--dev-set", str(results.parent / "absent")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    # Exit status 1 means a target was missed, which a quick run on a busy machine may do.
    assert completed.returncode in (0, 1), completed.stderr
    assert (ROOT / "docs" / "benchmarks.md").read_text() == page, "--no-page rewrote docs/benchmarks.md"
    return json.loads(results.read_text())


def test_quick_run_stores_every_section(quick_results):
    assert sorted(quick_results) == sorted(SECTIONS)


@pytest.mark.parametrize("name", SECTIONS)
def test_section_ratios_are_positive_finite(quick_results, name):
    section = quick_results[name]
    assert section["name"] == name
    assert section["comparisons"], f"section {name} has no comparisons: {section['notes']}"
    for comparison in section["comparisons"]:
        assert isinstance(comparison["ratio"], float), comparison
        assert math.isfinite(comparison["ratio"]), comparison
        assert comparison["ratio"] > 0, comparison
        assert comparison["measured"], comparison
        assert comparison["met"] in (True, False, None), comparison
        if comparison["target"] is not None:
            assert comparison["direction"] in ("min", "max"), comparison
            assert isinstance(comparison["met"], bool), comparison


@pytest.mark.parametrize("name", SECTIONS)
def test_section_records_its_run(quick_results, name):
    run = quick_results[name]["run"]
    assert run["quick"] is True
    assert run["command"].startswith("python -m benchmarks ")
    assert run["machine"]["cores"] >= 1
    assert run["date"].endswith("UTC")


def test_inference_compares_with_pytorch(quick_results):
    names = [c["name"] for c in quick_results["inference"]["comparisons"]]
    measurements = quick_results["inference"]["measurements"]
    if not (ROOT / "models" / "sortofclevr.pt").is_file():
        pytest.skip("models/sortofclevr.pt is absent, so the section measures only GFLOP/s")
    assert measurements["winners_agree"] == "yes"
    assert any("batch 64" in name for name in names), names
    assert any("batch 1" in name for name in names), names


def test_inference_counts_encoder_flops(quick_results):
    measurements = quick_results["inference"]["measurements"]
    assert measurements["flops_batch_64"] > 0
    assert measurements["flops_conv"] > 0
    assert measurements["sgemm_gflops"] > 0


def test_batch_bound_sums_stage_cpu(quick_results):
    section = quick_results["batch"]
    measurements = section["measurements"]
    stages = [measurements[f"{stage}_cpu_ms_per_image"] for stage in ("decode", "model", "records")]
    assert all(value > 0 for value in stages), measurements
    bound = next(c for c in section["comparisons"] if c["name"].startswith("bound on the efficiency"))
    least_marginal = sum(stages) / measurements["raw_threads"]
    assert bound["ratio"] == pytest.approx(measurements["raw_ms_per_image"] / least_marginal, rel=1e-2)


def test_reasoning_notes_rendered_scenes(quick_results):
    section = quick_results["reasoning"]
    assert section["measurements"]["source"] == "rendered scenes"
    assert any("absent" in note for note in section["notes"]), section["notes"]
    assert section["measurements"]["questions"] == 30 * section["measurements"]["images"]


def test_count_flops_matches_hand_count(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.inference import count_flops

    weights = [
        numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "conv_w"),
        numpy_helper.from_array(np.ones((10, 5), np.float32), "matmul_w"),
        numpy_helper.from_array(np.ones((4, 8), np.float32), "einsum_w"),
    ]
    nodes = [
        # [B, 3, 10, 10] -> [B, 8, 5, 5]: 2 * B * 8 * 5 * 5 * 3 * 3 * 3 FLOPs
        helper.make_node("Conv", ["image", "conv_w"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        # [B, 8, 5, 5] -> [B, 4, 5, 5] by "gc,bchw->bghw": 2 * B * 4 * 8 * 5 * 5 FLOPs
        helper.make_node("Einsum", ["einsum_w", "conv"], ["mixed"], equation="gc,bchw->bghw"),
        helper.make_node("Reshape", ["mixed", "shape"], ["flat"]),
        # [B * 10, 10] x [10, 5]: 2 * B * 10 * 10 * 5 FLOPs
        helper.make_node("MatMul", ["flat", "matmul_w"], ["out"]),
    ]
    shape = numpy_helper.from_array(np.array([-1, 10], np.int64), "shape")
    graph = helper.make_graph(
        nodes,
        "count",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 10, 10])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        initializer=[*weights, shape],
    )
    path = tmp_path / "count.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))

    counts = count_flops(path, batch=2)

    assert counts["Conv"] == 2 * 2 * 8 * 5 * 5 * 3 * 3 * 3
    assert counts["Einsum"] == 2 * 2 * 4 * 8 * 5 * 5
    assert counts["MatMul"] == 2 * 2 * 10 * 10 * 5
    assert counts["Gemm"] == 0
