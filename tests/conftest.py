"""Shared fixtures: repository paths and one tiny training run reused by several test modules."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DEV = ROOT.parent / "shared" / "benchmarks" / "sortofclevr-dev"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Train the tiny world once (about 15 s on 2 cores); returns (run dir, CLI summary)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("tiny_run")
    result = subprocess.run(
        [sys.executable, "-m", "training", "--world", "tiny", "--out", str(out), "--seed", "0", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_model(tiny_run, tmp_path_factory):
    """The tiny run exported to ONNX with top-3 outputs and verified."""
    out = tmp_path_factory.mktemp("tiny_model") / "tiny.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "export", str(tiny_run[0]), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return out
