"""One scene in several valid encodings gives the same facts through the CLI, batch and gRPC.

The pixel limit and bad images are checked through the same three entry points.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# WTABRIDGE_TEST_MODEL points the tests at another export of the same contract.
MODEL = Path(os.environ.get("WTABRIDGE_TEST_MODEL", ROOT / "models" / "sortofclevr.onnx"))
if not MODEL.is_file():
    pytest.skip(f"model {MODEL} is missing; export one with python -m export", allow_module_level=True)

from reasoning.engine import Limits, ReasoningPool
from reasoning.facts import extraction_facts, render_facts
from service import batch
from service.client import ServiceError, SymbolsClient
from service.inference import Extractor
from service.server import create_server
from service.settings import Settings
from training.worlds import SortOfClevrWorld

SIDE = 75
LARGE = 150
SERVER_MAX_PIXELS = 30_000  # lets the 150 x 150 variants through
WHITE = (255, 255, 255)


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` RGB pixels but contains no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def without_confidences(facts: str) -> list[str]:
    """The facts minus `confidence(...)`, whose probabilities move with JPEG's small colour shifts."""
    return [line for line in facts.splitlines() if line and not line.startswith("confidence(")]


def scaled_facts(facts: list[str], factor: int) -> list[str]:
    """The facts of the 75 px scene as the same scene enlarged `factor` times must read.

    service/inference.py maps a decoded pixel centre x to floor((x + 0.5) * factor), which
    is factor * x + factor // 2 for an integer factor.
    """

    def position(match: re.Match) -> str:
        x, y = int(match[2]), int(match[3])
        return f"position({match[1]},{factor * x + factor // 2},{factor * y + factor // 2})."

    scaled = []
    for line in facts:
        line = re.sub(r"^position\((\w+),(\d+),(\d+)\)\.$", position, line)
        line = re.sub(r"^image_size\((\d+),(\d+)\)\.$", lambda m: f"image_size({int(m[1]) * factor},{int(m[2]) * factor}).", line)
        scaled.append(line)
    return scaled


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    images, _ = SortOfClevrWorld(plain=1.0).sample(1, np.random.default_rng(7))
    return images[0]


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor.load(MODEL, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def expected(scene, extractor) -> list[str]:
    return without_confidences(render_facts(extraction_facts(extractor.extract([scene], ["scene"])[0])))


@pytest.fixture(scope="module")
def variants(scene, tmp_path_factory) -> dict[str, Path]:
    """The scene as plain RGB PNG and in other valid encodings, each as a file."""
    plain = Image.fromarray(scene)
    background = np.all(scene == WHITE, axis=2)
    assert background.any(), "the scene needs a white background for the transparency variants"

    # Background pixels become transparent black, so only compositing on white restores them.
    rgba = np.dstack([scene, np.full(scene.shape[:2], 255, dtype=np.uint8)])
    rgba[background] = (0, 0, 0, 0)

    palette = plain.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    assert np.array_equal(np.asarray(palette.convert("RGB")), scene), "the scene has more than 256 colours"
    white_index = palette.getpixel((int(np.argwhere(background)[0][1]), int(np.argwhere(background)[0][0])))
    colours = palette.getpalette()
    colours[3 * white_index : 3 * white_index + 3] = [0, 0, 0]
    transparent_palette = palette.copy()
    transparent_palette.putpalette(colours)

    encodings = {
        "plain.png": encode(plain),
        "rgba.png": encode(Image.fromarray(rgba, "RGBA")),
        "palette.png": encode(palette),
        "palette-transparent.png": encode(transparent_palette, transparency=white_index),
        # JPEG is lossy: at quality 95 with full-resolution colour (4:4:4) pixels move by up
        # to about 20 levels, so pixel equality is impossible, but the facts other than
        # confidence(...) must match exactly. Pillow's default 4:2:0 chroma subsampling
        # halves colour resolution and moves edge pixels of these 10 px shapes by up to 199
        # levels, which can change a decoded shape, so it is not used here.
        "quality95.jpg": encode(plain, "JPEG", quality=95, subsampling=0),
        "nearest150.png": encode(plain.resize((LARGE, LARGE), Image.Resampling.NEAREST)),
        "bicubic150.png": encode(plain.resize((LARGE, LARGE), Image.Resampling.BICUBIC)),
    }
    folder = tmp_path_factory.mktemp("variants")
    paths = {}
    for name, data in encodings.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def expected_for(name: str, expected: list[str]) -> list[str]:
    return scaled_facts(expected, LARGE // SIDE) if "150" in name else expected


@pytest.fixture(scope="module")
def address(extractor):
    settings = Settings(model=MODEL, host="127.0.0.1", port=0, provider="cpu", threads=1, max_pixels=SERVER_MAX_PIXELS)
    with ReasoningPool(Limits(), workers=1) as pool:
        server, port = create_server(settings, extractor=extractor, reasoning_pool=pool)
        server.start()
        yield f"127.0.0.1:{port}"
        server.stop(0)


def run_module(*args: str) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("WTABRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False
    )


def batch_records(out: Path) -> dict[str, dict]:
    return {record["image"]: record for record in map(json.loads, out.read_text().splitlines())}


# --------------------------------------------------------------------------- same facts


def test_plain_png_matches_in_process_facts(variants, expected, extractor):
    from service.images import load_image

    image = load_image(variants["plain.png"])
    facts = render_facts(extraction_facts(extractor.extract([image], ["scene"])[0]))
    assert without_confidences(facts) == expected


def test_query_cli_gives_same_facts(variants, expected):
    paths = [str(path) for path in variants.values()]

    result = run_module("reasoning.query", *paths, "--model", str(MODEL), "--facts-only", "--json")

    assert result.returncode == 0, result.stderr
    documents = json.loads(result.stdout)["images"]
    assert [document["image"] for document in documents] == paths
    for name, document in zip(variants, documents):
        facts = "".join(f"{fact}.\n" for fact in document["facts"])  # JSON lists facts without the final dot
        assert without_confidences(facts) == expected_for(name, expected), name


def test_batch_in_process_gives_same_facts(variants, expected, tmp_path, capsys):
    out = tmp_path / "facts.jsonl"
    argv = [*map(str, variants.values()), "--out", str(out), "--model", str(MODEL), "--threads", "1", "--no-progress"]

    assert batch.main(argv) == 0, capsys.readouterr().err

    found = batch_records(out)
    for name, path in variants.items():
        assert without_confidences(found[str(path)]["facts"]) == expected_for(name, expected), name


def test_batch_server_gives_same_facts(variants, expected, address, tmp_path, capsys):
    out = tmp_path / "facts.jsonl"
    argv = [*map(str, variants.values()), "--out", str(out), "--server", address, "--no-progress"]

    assert batch.main(argv) == 0, capsys.readouterr().err

    found = batch_records(out)
    for name, path in variants.items():
        assert without_confidences(found[str(path)]["facts"]) == expected_for(name, expected), name


def test_grpc_extract_gives_same_facts(variants, expected, address):
    with SymbolsClient(address, timeout=20) as client:
        for name, path in variants.items():
            served = client.extract(path.read_bytes(), name)
            assert without_confidences(served.facts) == expected_for(name, expected), name


# --------------------------------------------------------------------------- pixel limit and bad images


def test_query_cli_pixel_limit_is_one_line(variants):
    path = variants["plain.png"]

    result = run_module("reasoning.query", str(path), "--model", str(MODEL), "--max-pixels", "5000", "--facts-only")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"error: {path}: 75 x 75 = 5625 pixels exceeds the limit of 5000 (--max-pixels)"]


@pytest.mark.parametrize("where", ["in-process", "server"])
def test_query_continues_after_bad_image(where, variants, expected, scene, address, tmp_path):
    good = variants["plain.png"]
    text = tmp_path / "notes.png"
    text.write_text("a text file with an image suffix")
    large = tmp_path / "large.png"
    Image.fromarray(scene).resize((200, 200)).save(large)
    source = ["--server", address] if where == "server" else ["--model", str(MODEL), "--max-pixels", "30000"]

    result = run_module("reasoning.query", str(good), str(text), str(large), str(good), *source, "--facts-only", "--json")

    assert result.returncode == 1
    prefix = f"server {address}: " if where == "server" else ""
    unreadable = f"{prefix}{text}: not a recognised image format, or its header is invalid"
    too_large = f"{prefix}{large}: 200 x 200 = 40000 pixels exceeds the limit of 30000 (--max-pixels)"
    assert result.stderr.splitlines() == [f"error: {unreadable}", f"error: {too_large}", "2 of 4 images failed"]
    documents = json.loads(result.stdout)["images"]
    assert documents[1] == {"image": str(text), "error": unreadable}
    assert documents[2] == {"image": str(large), "error": too_large}
    for document in (documents[0], documents[3]):
        facts = "".join(f"{fact}.\n" for fact in document["facts"])
        assert without_confidences(facts) == expected

    printed = run_module("reasoning.query", str(good), str(text), str(large), *source, "--facts-only")
    comments = [line for line in printed.stdout.splitlines() if line.startswith("%")]
    assert comments == [f"% image: {good} (75 x 75)", f"% error: {unreadable}", f"% error: {too_large}"]


def test_file_errors_match_with_server(address, tmp_path, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    files = [tmp_path / "absent.png", empty, folder]
    expected = [f"{files[0]}: file not found", f"{empty}: empty file", f"{folder}: is a directory, not an image file"]

    for source in (["--model", str(MODEL)], ["--server", address]):
        result = run_module("reasoning.query", *map(str, files), *source, "--facts-only")
        assert result.returncode == 1
        assert result.stderr.splitlines() == [*(f"error: {line}" for line in expected), "3 of 3 images failed"]

    # service.batch walks a folder for images instead, so it gets the two files.
    for source in (["--model", str(MODEL), "--threads", "1"], ["--server", address]):
        out = tmp_path / f"records-{source[0][2:]}.jsonl"
        assert batch.main([*map(str, files[:2]), "--out", str(out), *source, "--no-progress"]) == 1
        capsys.readouterr()
        found = batch_records(out)
        assert [found[str(path)]["error"] for path in files[:2]] == expected[:2]


def test_batch_pixel_limit_is_a_record(variants, tmp_path, capsys):
    out = tmp_path / "facts.jsonl"
    small, large = variants["plain.png"], variants["nearest150.png"]
    argv = [str(small), str(large), "--out", str(out), "--model", str(MODEL), "--threads", "1", "--max-pixels", "10000"]

    assert batch.main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"1 of 2 files failed; their error records are in {out}"]

    found = batch_records(out)
    assert "error" not in found[str(small)]
    assert found[str(large)]["error"] == f"{large}: 150 x 150 = 22500 pixels exceeds the limit of 10000 (--max-pixels)"


def test_batch_rejects_max_pixels_with_server(variants, address, tmp_path, capsys):
    argv = [str(variants["plain.png"]), "--out", str(tmp_path / "o.jsonl"), "--server", address, "--max-pixels", "100"]

    assert batch.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --max-pixels applies to in-process runs; with --server the server's --max-pixels applies"
    ]


def test_batch_server_applies_server_pixel_limit(scene, address, tmp_path, capsys):
    out = tmp_path / "facts.jsonl"
    large = tmp_path / "large.png"
    Image.fromarray(scene).resize((200, 200)).save(large)

    assert batch.main([str(large), "--out", str(out), "--server", address, "--no-progress"]) == 1
    capsys.readouterr()

    assert batch_records(out)[str(large)]["error"] == (
        f"{large}: 200 x 200 = 40000 pixels exceeds the limit of 30000 (--max-pixels)"
    )


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        (png_header(10_000, 10_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "bomb: 10000 x 10000 = 100000000 pixels exceeds the limit of 30000 (--max-pixels)"),
        (png_header(20_000, 10_000), grpc.StatusCode.RESOURCE_EXHAUSTED, "bomb: 200000000 pixels exceeds the limit of 30000 (--max-pixels)"),
        (png_header(0, 10), grpc.StatusCode.INVALID_ARGUMENT, "bomb: not a recognised image format, or its header is invalid"),
        (encode(Image.new("RGB", (2, 2))), grpc.StatusCode.INVALID_ARGUMENT, "bomb: 2 x 2 pixels is below the minimum side of 4"),
    ],
    ids=["pillow-warning-range", "pillow-error-range", "zero-width", "tiny"],
)
def test_grpc_rejects_bad_header(address, data, code, message):
    with SymbolsClient(address, timeout=20) as client, pytest.raises(ServiceError) as caught:
        client.extract(data, "bomb")
    assert caught.value.code == code
    assert caught.value.details == message
