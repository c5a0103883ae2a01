"""`python -m benchmarks.soak` at a small size: the machinery, zero failures and the page region, without timing thresholds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# WTABRIDGE_TEST_MODEL points the tests at another export of the same contract.
MODEL = Path(os.environ.get("WTABRIDGE_TEST_MODEL", ROOT / "models" / "sortofclevr.onnx"))

from benchmarks.soak import REGION_END, REGION_START, write_region

PAGE = """# Benchmarks

Intro that stays.

## Soak

Prose that stays.

<!-- soak results: written by make soak -->
old numbers
<!-- end of soak results -->

## After
"""


@pytest.mark.skipif(not MODEL.is_file(), reason=f"model {MODEL} is missing; export one with python -m export")
def test_small_soak_has_no_failures(tmp_path):
    out = tmp_path / "soak.json"
    page = tmp_path / "benchmarks.md"
    page.write_text(PAGE)
    command = [
        sys.executable, "-m", "benchmarks.soak",
        "--model", str(MODEL),
        "--queries", "300",
        "--extracts", "500",
        "--clients", "8",
        "--images", "8",
        "--no-memory-check",
        "--out", str(out),
        "--page", str(page),
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)

    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["passed"] is True
    assert result["memory_checked"] is False
    assert result["query"]["calls"] == 300
    assert result["query"]["failures"] == 0
    assert [sample["calls"] for sample in result["query"]["samples"]] == list(range(30, 301, 30))
    assert all(sample["server_rss_kib"] > 0 for sample in result["query"]["samples"])
    assert all(s["tree_rss_kib"] > s["server_rss_kib"] for s in result["query"]["samples"])
    assert result["extract"]["calls"] == 500
    assert result["extract"]["clients"] == 8
    assert result["extract"]["failures"] == 0
    assert result["extract"]["p50_ms"] <= result["extract"]["p99_ms"]

    text = page.read_text()
    assert "old numbers" not in text
    assert text.startswith("# Benchmarks\n\nIntro that stays.\n\n## Soak\n\nProse that stays.\n\n" + REGION_START)
    assert text.endswith(REGION_END + "\n\n## After\n")
    assert "| Extract, load | 500 | 8 | 0 |" in text


def test_region_markers_required(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n")

    with pytest.raises(ValueError, match="markers .* are missing"):
        write_region(page, {})
    assert page.read_text() == "# Benchmarks\n"


def test_invalid_count_rejected():
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--clients", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 2
    assert "invalid --clients 0: at least 1 is needed" in finished.stderr
