"""Every command fails on bad input with exit status > 0 and exactly one stderr line, no traceback."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "sortofclevr.onnx"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason=f"default model {MODEL} is absent")


def run_module(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("WTABRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )


def closed_port() -> int:
    """A loopback port that was bound and closed, so nothing listens on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A scene, a text file named .png, a header that claims 10,000 x 10,000 pixels, and a question folder."""
    from training.worlds import SortOfClevrWorld

    folder = tmp_path_factory.mktemp("inputs")
    images, _ = SortOfClevrWorld(plain=1.0).sample(1, np.random.default_rng(3))
    Image.fromarray(images[0]).save(folder / "scene.png")
    (folder / "notes.png").write_text("a text file with an image suffix")

    header = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)
    chunks = b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in [(b"IHDR", header), (b"IDAT", b""), (b"IEND", b"")]
    )
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)

    questions = folder / "questions"
    questions.mkdir()
    (questions / "notes.png").write_text("a text file with an image suffix")
    (questions / "questions.json").write_text(json.dumps({"images": [{"image": "notes.png", "objects": []}]}))
    return {
        "scene": folder / "scene.png",
        "notes": folder / "notes.png",
        "bomb": folder / "bomb.png",
        "questions": questions,
        "absent": folder / "absent.png",
        "out": folder / "out.jsonl",
    }


def fill(argument: str, files: dict[str, Path]) -> str:
    """Replace `{name}` with the path of that file, and `{closed}` with an address where no server listens."""
    if argument == "{closed}":
        return f"127.0.0.1:{closed_port()}"
    return argument.format(**{name: str(path) for name, path in files.items()}) if "{" in argument else argument


# (command and arguments, exit status, the one stderr line; "{name}" is a path from `files`)
CASES = {
    "query-missing-image": (
        ["reasoning.query", "{absent}", "--facts-only"],
        1,
        "error: {absent}: file not found",
    ),
    "query-not-an-image": (
        ["reasoning.query", "{notes}", "--facts-only"],
        1,
        "error: {notes}: not a recognised image format, or its header is invalid",
    ),
    "query-decompression-bomb": (
        ["reasoning.query", "{bomb}", "--facts-only"],
        1,
        "error: {bomb}: 10000 x 10000 = 100000000 pixels exceeds the limit of 40000000 (--max-pixels)",
    ),
    "query-max-pixels-too-small": (
        ["reasoning.query", "{scene}", "--max-pixels", "0"],
        2,
        "error: invalid --max-pixels 0: use at least 16",
    ),
    "query-max-pixels-with-server": (
        ["reasoning.query", "{scene}", "--server", "127.0.0.1:1", "--max-pixels", "100"],
        2,
        "error: --max-pixels applies to in-process decoding; with --server the server's --max-pixels applies",
    ),
    "query-bad-flag-type": (
        ["reasoning.query", "{scene}", "--models", "many"],
        2,
        "error: argument --models: invalid int value: 'many'; see python -m reasoning.query --help",
    ),
    "benchmark-bad-batch-size": (
        ["reasoning.benchmark", "sortofclevr", "{questions}", "--batch-size", "0"],
        2,
        "error: invalid --batch-size 0: use 1 or more",
    ),
    "benchmark-unknown-flag": (
        ["reasoning.benchmark", "sortofclevr", "{questions}", "--fast"],
        2,
        "error: unrecognized arguments: --fast; see python -m reasoning.benchmark --help",
    ),
    "evaluate-not-an-image": (
        ["export.evaluate", str(MODEL), "{questions}"],
        2,
        "error: {questions}/notes.png: not a recognised image format, or its header is invalid",
    ),
    "evaluate-missing-model": (
        ["export.evaluate", "{absent}", "{questions}"],
        2,
        "error: {absent}: model file not found",
    ),
    "export-bad-top-k": (
        ["export", "{questions}", "--out", "{out}", "--top-k", "-1"],
        2,
        "error: --top-k must be 0 or more, got -1",
    ),
    "export-bad-flag-type": (
        ["export", "{questions}", "--out", "{out}", "--top-k", "three"],
        2,
        "error: argument --top-k: invalid int value: 'three'; see python -m export --help",
    ),
    "service-unknown-flag": (
        ["service", "--bogus"],
        2,
        "error: unrecognized arguments: --bogus; see python -m service --help",
    ),
    "service-max-pixels-too-small": (
        ["service", "--max-pixels", "8"],
        2,
        "error: invalid setting --max-pixels='8': Input should be greater than or equal to 16",
    ),
    "batch-bad-threads": (
        ["service.batch", "{scene}", "--out", "{out}", "--threads", "0"],
        2,
        "error: invalid --threads 0: at least 1 is needed",
    ),
    "batch-max-pixels-too-small": (
        ["service.batch", "{scene}", "--out", "{out}", "--max-pixels", "15"],
        2,
        "error: invalid --max-pixels 15: at least 16 is needed",
    ),
    "batch-bad-flag-type": (
        ["service.batch", "{scene}", "--out", "{out}", "--batch-size", "big"],
        2,
        "error: argument --batch-size: invalid int value: 'big'; see python -m service.batch --help",
    ),
}
NEEDS_MODEL = {"query-missing-image", "query-not-an-image", "query-decompression-bomb", "evaluate-not-an-image"}


@pytest.mark.parametrize(("argv", "status", "line"), list(CASES.values()), ids=list(CASES))
def test_bad_input_gives_one_error_line(argv, status, line, files, request):
    if request.node.callspec.id in NEEDS_MODEL and not MODEL.is_file():
        pytest.skip(f"default model {MODEL} is absent")

    result = run_module(*(fill(argument, files) for argument in argv))

    assert result.returncode == status, result.stderr
    assert result.stderr.splitlines() == [fill(line, files)]


def test_query_unreachable_server_names_address(files):
    port = closed_port()

    result = run_module("reasoning.query", str(files["scene"]), "--server", f"127.0.0.1:{port}", "--facts-only")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: cannot reach server 127.0.0.1:{port}: Connection refused; check that python -m service runs there"
    ]


def test_training_bad_value_gives_one_line(tmp_path):
    pytest.importorskip("torch")

    result = run_module("training", "--world", "tiny", "--out", str(tmp_path / "run"), "--steps", "0")

    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: invalid --steps 0: use a value above 0"]
    assert not (tmp_path / "run").exists()


@needs_model
def test_query_closed_pipe_exits_quietly(files):
    # Text output of 200 images is far larger than a pipe buffer, so writes hit the closed pipe.
    argv = [sys.executable, "-m", "reasoning.query", *[str(files["scene"])] * 200, "--facts-only"]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    status = process.wait(timeout=120)

    assert first.startswith("% image: ")
    assert stderr == ""
    assert status == 141  # 128 + SIGPIPE, what a shell reports for a tool that SIGPIPE ended


@pytest.mark.parametrize("module", ["reasoning.query", "service.batch"])
def test_help_documents_image_handling(module):
    result = run_module(module, "--help")

    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--max-pixels N" in text
    assert "transparency is composited on white" in text
    assert "the EXIF orientation is applied" in text
    assert "an animated image gives its first frame" in text
