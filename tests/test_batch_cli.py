"""`python -m service.batch` in process and against a server: records, per-file errors, resume."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import clingo
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
from service.inference import Extractor
from service.server import create_server
from service.settings import Settings
from training.worlds import SortOfClevrWorld

CONFIDENCE = "confidence("


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor.load(MODEL, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def address(extractor):
    settings = Settings(model=MODEL, host="127.0.0.1", port=0, provider="cpu", threads=1, max_message_bytes=200_000)
    with ReasoningPool(Limits(), workers=1) as pool:
        server, port = create_server(settings, extractor=extractor, reasoning_pool=pool)
        server.start()
        yield f"127.0.0.1:{port}"
        server.stop(0)


@pytest.fixture
def folder(tmp_path) -> Path:
    """Four scenes (one in a subfolder), a corrupt PNG and a text file that the walk ignores."""
    images, _ = SortOfClevrWorld(plain=1.0).sample(4, np.random.default_rng(21))
    root = tmp_path / "images"
    (root / "more").mkdir(parents=True)
    for index, image in enumerate(images):
        target = root / ("more" if index == 3 else "") / f"scene{index}.png"
        Image.fromarray(image).save(target)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    (root / "notes.txt").write_text("not an image")
    return root


def records(path: Path) -> dict[str, dict]:
    lines = path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert len({record["image"] for record in parsed}) == len(parsed), "an image is recorded twice"
    return {record["image"]: record for record in parsed}


def run_batch(*argv: str, capsys) -> tuple[int, str]:
    status = batch.main(list(argv))
    return status, capsys.readouterr().err


def without_confidences(facts: str) -> list[str]:
    return [line for line in facts.splitlines() if not line.startswith(CONFIDENCE)]


def check_record(record: dict, extractor: Extractor) -> None:
    """The record's objects and facts agree with a local run of the same image."""
    with Image.open(record["image"]) as image:
        local = extractor.extract([np.asarray(image.convert("RGB"))], [record["image"]])[0]
    assert [o["id"] for o in record["objects"]] == [o.id for o in local.objects]
    for served, expected in zip(record["objects"], local.objects):
        assert {k: a["value"] for k, a in served["attributes"].items()} == {
            k: a.value for k, a in expected.attributes.items()
        }
    assert without_confidences(record["facts"]) == without_confidences(render_facts(extraction_facts(local)))
    assert (record["width"], record["height"]) == (local.width, local.height)


@pytest.mark.parametrize("mode", ["in-process", "server"])
def test_batch_records_and_errors(mode, folder, tmp_path, extractor, request, capsys):
    out = tmp_path / "out" / "symbols.jsonl"
    missing = tmp_path / "missing.png"
    server = (
        ["--server", request.getfixturevalue("address")]
        if mode == "server"
        else ["--model", str(MODEL), "--threads", "1"]
    )
    status, err = run_batch(str(folder), str(missing), "--out", str(out), *server, capsys=capsys)

    assert status == 1
    assert err.strip() == f"2 of 6 files failed; their error records are in {out}"
    found = records(out)
    assert set(found) == {
        *(str(folder / f"scene{i}.png") for i in range(3)),
        str(folder / "more" / "scene3.png"),
        str(folder / "corrupt.png"),
        str(missing),
    }
    assert (
        "cannot decode image" in found[str(folder / "corrupt.png")]["error"]
        or "not a recognised" in found[str(folder / "corrupt.png")]["error"]
    )
    assert "missing.png" in found[str(missing)]["error"]
    for record in found.values():
        if "error" not in record:
            check_record(record, extractor)


@pytest.mark.parametrize("mode", ["in-process", "server"])
def test_batch_resume_skips_finished(mode, folder, tmp_path, request, capsys):
    out = tmp_path / "symbols.jsonl"
    server = (
        ["--server", request.getfixturevalue("address")]
        if mode == "server"
        else ["--model", str(MODEL), "--threads", "1"]
    )
    assert run_batch(str(folder), "--out", str(out), *server, capsys=capsys)[0] == 1

    # Mark a finished record: a rerun that redid the image would overwrite the mark.
    first = records(out)
    finished = str(folder / "scene0.png")
    text = out.read_text().replace(json.dumps(first[finished]["facts"]), json.dumps("% kept\n"))
    out.write_text(text + '{"image": "cut sh')  # and leave a line cut short, as an interruption would

    # Repair the corrupt file: the rerun retries it and replaces its error record.
    Image.open(folder / "scene1.png").save(folder / "corrupt.png")
    status, err = run_batch(str(folder), "--out", str(out), *server, capsys=capsys)

    assert status == 0
    assert err.strip() == f"1 of 5 images extracted; 4 were already in {out}"
    again = records(out)
    assert len(again) == 5
    assert again[finished]["facts"] == "% kept\n"
    assert "error" not in again[str(folder / "corrupt.png")]

    status, err = run_batch(str(folder), "--out", str(out), *server, capsys=capsys)
    assert status == 0
    assert records(out) == again


def test_batch_lp_format_blocks_solve(folder, tmp_path, capsys):
    out = tmp_path / "facts.lp"
    status, _ = run_batch(
        str(folder), "--out", str(out), "--format", "lp", "--model", str(MODEL), "--threads", "1", capsys=capsys
    )
    assert status == 1

    blocks = [block for block in out.read_text().split("\n\n") if block.strip()]
    assert len(blocks) == 5
    errors = [block for block in blocks if block.startswith("% error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"% error: {json.dumps(str(folder / 'corrupt.png'))} ")
    for block in blocks:
        if block.startswith("% image: "):
            control = clingo.Control()
            control.add("base", [], block)
            control.ground([("base", [])])
            with control.solve(yield_=True) as handle:
                model = next(iter(handle))
                assert any(symbol.name == "object" for symbol in model.symbols(atoms=True))

    # Rerun: finished blocks stay, the failed file is retried, nothing is duplicated.
    status, _ = run_batch(str(folder), "--out", str(out), "--format", "lp", "--model", str(MODEL), capsys=capsys)
    assert status == 1
    rerun = [block for block in out.read_text().split("\n\n") if block.strip()]
    assert sorted(rerun) == sorted(blocks)


def test_batch_server_unreadable_file(folder, tmp_path, address, capsys):
    unreadable = folder / "loop.png"
    unreadable.symlink_to(unreadable)  # reading it fails with "too many levels of symbolic links"
    out = tmp_path / "symbols.jsonl"
    status, err = run_batch(
        str(folder / "scene0.png"), str(unreadable), "--out", str(out), "--server", address, capsys=capsys
    )
    assert status == 1
    assert "1 of 2 files failed" in err
    assert "cannot read file: Too many levels of symbolic links" in records(out)[str(unreadable)]["error"]


def test_batch_server_oversized_file_fails_alone(folder, tmp_path, address, capsys):
    big = folder / "big.png"
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, size=(400, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    big.write_bytes(buffer.getvalue())  # about 480 kB of noise, over the 200 kB limit of this server
    out = tmp_path / "symbols.jsonl"
    status, _ = run_batch(str(big), str(folder / "scene0.png"), "--out", str(out), "--server", address, capsys=capsys)
    assert status == 1
    found = records(out)
    assert "message limit of 200000 bytes" in found[str(big)]["error"]
    assert "error" not in found[str(folder / "scene0.png")]


def test_batch_unreachable_server_fails_in_one_line(folder, tmp_path, capsys):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, err = run_batch(
        str(folder),
        "--out",
        str(tmp_path / "o.jsonl"),
        "--server",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "1",
        capsys=capsys,
    )
    assert status == 2
    assert err.strip().count("\n") == 0
    assert err.startswith(f"error: server 127.0.0.1:{port}: cannot reach")


@pytest.mark.parametrize(
    ("existing", "fmt", "line"),
    [
        ('{"image": "a.png", "facts": ""}\n{"image": "b.png", "facts": ""}\n', "lp", 1),  # JSON Lines read as lp
        ('% image: "a.png"\nobject(red).\n\n', "jsonl", 1),  # lp read as JSON Lines
        ("my notes\nabout this run", "lp", 1),  # text without a blank line, not a cut-short block
        ('{"image": "a.png", "facts": ""}\nmy note\n', "jsonl", 2),  # a foreign line between records
    ],
)
def test_batch_foreign_output_left_untouched(existing, fmt, line, folder, tmp_path, capsys):
    out = tmp_path / "output.txt"
    out.write_text(existing)

    status, err = run_batch(
        str(folder), "--out", str(out), "--format", fmt, "--model", str(MODEL), "--threads", "1", capsys=capsys
    )

    assert status == 2
    assert err.strip() == (
        f"error: output {out}, line {line}: not a {fmt} record of python -m service.batch; "
        "choose another --out, or the --format the file was written with"
    )
    assert out.read_text() == existing


def test_batch_no_images_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status, err = run_batch(str(tmp_path / "empty"), "--out", str(tmp_path / "o.jsonl"), capsys=capsys)
    assert status == 2
    assert err.strip() == f"error: no images found in {tmp_path / 'empty'}"


def test_batch_command_runs_as_module(folder, tmp_path):
    out = tmp_path / "symbols.jsonl"
    environ = {key: value for key, value in os.environ.items() if not key.startswith("WTABRIDGE_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.batch",
            str(folder / "scene0.png"),
            "--out",
            str(out),
            "--model",
            str(MODEL),
            "--threads",
            "1",
        ],
        check=False,
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert list(records(out)) == [str(folder / "scene0.png")]

    help_text = subprocess.run(
        [sys.executable, "-m", "service.batch", "--help"],
        check=False,
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_text.returncode == 0
    assert "--server HOST:PORT" in help_text.stdout


def test_batch_progress_bar_on_terminal(folder, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = batch.build_parser().parse_args(
        [
            str(folder / "scene0.png"),
            str(folder / "scene1.png"),
            "--out",
            str(tmp_path / "o.jsonl"),
            "--model",
            str(MODEL),
            "--threads",
            "1",
        ]
    )
    stderr = Terminal()
    assert batch.run(args, stderr) == 0
    assert "2/2" in stderr.getvalue()

    args.no_progress = True
    (tmp_path / "o.jsonl").unlink()
    quiet = Terminal()
    assert batch.run(args, quiet) == 0
    assert "2/2" not in quiet.getvalue()
