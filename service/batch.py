"""Batch symbol extraction: `python -m service.batch PATH... --out FILE [--server HOST:PORT]`.

Images run in process with ONNX Runtime by default, or against a running server with
`--server`. Every image gets one record in the output, its objects and facts or the
error that stopped it. Rerunning with the same output skips images already recorded
without an error and retries the others.

Output formats:
  jsonl  one JSON object per line: {"image", "width", "height", "objects", "facts"}, or
         {"image", "error"} for an image that failed
  lp     one block per image: a `% image: "PATH"` line, the facts, and a blank line; a
         failed image is a `% error: "PATH" MESSAGE` line and a blank line. The blocks are
         records, not one program: facts of different images share constants.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
from collections.abc import Iterator, Sequence
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .cli import ArgumentParser
from .images import DEFAULT_MAX_PIXELS, IMAGE_HANDLING, MIN_MAX_PIXELS

__all__ = ["IMAGE_SUFFIXES", "Record", "collect_images", "main", "read_records"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
EXIT_OK, EXIT_FILES_FAILED, EXIT_FATAL = 0, 1, 2
# Chunks read or run ahead of the one being written. A deeper queue lets the reader keep
# working while the model's thread has the cores.
READ_AHEAD = 4


class BatchError(RuntimeError):
    """A failure that stops the whole run, such as a model that cannot load or an unreachable server."""


@dataclass(frozen=True)
class Record:
    """One finished image in the output: its path and, for a failure, the error message."""

    image: str
    error: str | None
    text: str  # the record exactly as it appears in the output, trailing newline included

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------- inputs


def collect_images(paths: Sequence[str | Path]) -> list[str]:
    """Expand PATH arguments into image paths: files as given, folders walked for image suffixes.

    Order follows the arguments, with folder contents sorted; duplicates are dropped. A
    path that does not exist is kept, so that it gets an error record.
    """
    found: list[str] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            members = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            members = [path]
        for member in members:
            key = str(member)
            if key not in seen:
                seen.add(key)
                found.append(key)
    return found


# --------------------------------------------------------------------------- records


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_record(fmt: str, image: str, *, extraction=None, facts: str = "", error: str | None = None) -> str:
    """Return the output text of one image's record, trailing newline included."""
    if fmt == "jsonl":
        if error is not None:
            return json.dumps({"image": image, "error": _one_line(error)}) + "\n"
        record = {
            "image": image,
            "width": extraction.width,
            "height": extraction.height,
            "objects": [obj.model_dump(mode="json") for obj in extraction.objects],
            "facts": facts,
        }
        return json.dumps(record) + "\n"
    if error is not None:
        return f"% error: {json.dumps(image)} {_one_line(error)}\n\n"
    return f"% image: {json.dumps(image)}\n{facts}\n"


class ForeignText(ValueError):
    """Text in an existing output file that is not a record of the requested format."""

    def __init__(self, line: int) -> None:
        super().__init__(f"line {line}")
        self.line = line


def _jsonl_records(text: str) -> tuple[list[Record], int]:
    records = []
    end = 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if not line.endswith("\n"):
            if not line.startswith("{"):
                raise ForeignText(number)
            break  # a record cut short by an interrupted run
        end += len(line)
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise ForeignText(number) from None
        if not (isinstance(value, dict) and isinstance(value.get("image"), str)):
            raise ForeignText(number)
        error = value.get("error")
        records.append(Record(value["image"], None if error is None else str(error), line))
    return records, end


def _header_path(line: str, prefix: str) -> tuple[str, str] | None:
    """Split `% image: "PATH"` or `% error: "PATH" MESSAGE` into the path and the rest."""
    if not line.startswith(prefix):
        return None
    try:
        path, index = json.JSONDecoder().raw_decode(line, len(prefix))
    except json.JSONDecodeError:
        return None
    return (path, line[index:].strip()) if isinstance(path, str) else None


def _lp_records(text: str) -> tuple[list[Record], int]:
    records = []
    end = 0
    lines = text.splitlines(keepends=True)
    index = 0
    while index < len(lines):
        header = lines[index].rstrip("\n")
        image = _header_path(header, "% image: ")
        failure = _header_path(header, "% error: ")
        if image is None and failure is None:
            raise ForeignText(index + 1)
        # A block ends at its first blank line; a block without one was cut short.
        stop = index
        while stop < len(lines) and lines[stop].strip():
            stop += 1
        if stop >= len(lines) or not lines[stop].endswith("\n"):
            break
        block = "".join(lines[index : stop + 1])
        if image is not None:
            records.append(Record(image[0], None, block))
        else:
            records.append(Record(failure[0], failure[1] or "failed", block))
        end += len(block)
        index = stop + 1
    return records, end


def read_records(path: Path, fmt: str) -> tuple[list[Record], int]:
    """Parse an existing output file; return its complete records and where they end, in characters.

    Raises ForeignText at the first line that is neither a record of `fmt` nor the start of
    one cut short at the end of the file, so that no other text is ever rewritten away.
    """
    text = path.read_text(encoding="utf-8")
    return _jsonl_records(text) if fmt == "jsonl" else _lp_records(text)


def prepare_output(path: Path, fmt: str, images: Sequence[str]) -> set[str]:
    """Make `path` ready for appending and return the images it already contains without an error.

    Error records of images in this run are removed, because those images run again, and
    so is an incomplete record left by an interrupted run. Other records stay as they are.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        return set()
    text = path.read_text(encoding="utf-8")
    records, end = read_records(path, fmt)
    done = {record.image for record in records if record.ok}
    wanted = set(images)
    keep = [r for r in records if r.ok or (r.image not in wanted and r.image not in done)]
    if len(keep) != len(records) or end != len(text):
        # Written to a temporary file and renamed, so an interruption leaves the old file whole.
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as handle:
            handle.write("".join(record.text for record in keep))
        os.replace(handle.name, path)
    return done


# --------------------------------------------------------------------------- runners


@dataclass
class Outcome:
    image: str
    extraction: object | None = None  # an Extraction
    facts: str = ""
    error: str | None = None
    text: str | None = None  # the finished record, when the runner wrote it from the graph outputs
    # Write pending records to the file now, because the runner may wait before its next outcome.
    flush: bool = True


def _facts_text(extraction) -> str:
    from reasoning.facts import render_extraction_facts

    return render_extraction_facts(extraction)


def default_threads() -> int:
    """ONNX Runtime threads for in-process runs: one core is left to the threads that decode files and write records.

    On a 2-core machine, `python -m service.batch` on 2,000 rendered PNG files took about
    0.29 ms per image with one model thread and 0.33 to 0.36 ms with two (a few runs each),
    because decoding competed with the model for both cores.
    """
    from .cpus import usable_cpus

    return max(1, usable_cpus() - 1)


def run_in_process(images: Sequence[str], args: argparse.Namespace) -> Iterator[Outcome]:
    """Decode and run images with a local ONNX Runtime session, `args.batch_size` at a time."""
    import numpy as np

    from reasoning.errors import FactsError

    from .images import ImageError, PixelLimitError, load_image
    from .inference import Extractor, ModelError
    from .record_text import RecordWriter
    from .symbols import SymbolTableError

    try:
        # Without spinning, idle ONNX Runtime threads leave the cores to the threads that decode
        # files and write records. With spinning, benchmarks/batch.py measured 0.96 instead of
        # 0.59 ms per image on a busy 2-core machine.
        extractor = Extractor.load(
            args.model, provider=args.provider, threads=args.threads or default_threads(), spin=False
        )
    except (ModelError, SymbolTableError) as error:
        raise BatchError(str(error)) from None
    writer = RecordWriter(extractor.symbol_table, extractor.width, extractor.height, args.format)

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels

    def decode(image: str):
        try:
            return load_image(image, max_pixels=max_pixels, name=image)
        except PixelLimitError as error:
            return PixelLimitError(f"{error} (--max-pixels)")
        except ImageError as error:
            return error

    def read(chunk: Sequence[str]):
        """Decode the files of one chunk; return the arrays (or errors) and the stacked batch of the good ones."""
        decoded = [decode(image) for image in chunk]
        good = [extractor.prepare(array) for array in decoded if not isinstance(array, Exception)]
        return decoded, (np.stack(good) if good else None)

    def infer(read_chunk: Future):
        decoded, batch = read_chunk.result()
        return decoded, (extractor.run(batch) if batch is not None else {})

    chunks = [images[start : start + args.batch_size] for start in range(0, len(images), args.batch_size)]
    # Three stages run at once: one thread reads and decodes the next chunks, a second runs
    # the model on them, and this one turns the outputs of chunk k into records. Pillow's
    # decoder and ONNX Runtime release the GIL while they work.
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=1) as runner:
        ahead: deque[Future] = deque()

        def submit(number: int) -> None:
            if number < len(chunks):
                ahead.append(runner.submit(infer, reader.submit(read, chunks[number])))

        for number in range(READ_AHEAD):
            submit(number)
        for number, chunk in enumerate(chunks):
            decoded, outputs = ahead.popleft().result()
            submit(number + READ_AHEAD)
            good = [(image, array) for image, array in zip(chunk, decoded) if not isinstance(array, Exception)]
            sizes = [(array.shape[1], array.shape[0]) for _, array in good]
            names = [image for image, _ in good]
            # The writer returns None for the images that only the slow path below handles.
            texts = writer.records(outputs, sizes, names) if good else []
            rows = {image: (row, text) for row, (image, text) in enumerate(zip(names, texts))}
            outcomes = []
            for image, array in zip(chunk, decoded):
                if isinstance(array, Exception):
                    outcomes.append(Outcome(image, error=str(array), flush=False))
                    continue
                row, text = rows[image]
                if text is not None:
                    outcomes.append(Outcome(image, text=text, flush=False))
                    continue
                one = {key: value[row : row + 1] for key, value in outputs.items()}
                extraction = extractor.decode(one, [sizes[row]], [image])[0]
                try:
                    outcomes.append(Outcome(image, extraction=extraction, facts=_facts_text(extraction), flush=False))
                except FactsError as error:
                    outcomes.append(Outcome(image, error=f"{image}: cannot write facts: {error}", flush=False))
            outcomes[-1].flush = True  # the next chunk may not be ready yet
            yield from outcomes


def run_against_server(images: Sequence[str], args: argparse.Namespace) -> Iterator[Outcome]:
    """Send images over one ExtractStream; files that cannot be read or sent fail locally."""
    from ._proto import symbols_pb2 as pb
    from .client import ServiceError, SymbolsClient
    from .images import ImageError, read_image_file

    client = SymbolsClient(args.server)
    try:
        client.wait_ready(timeout=args.connect_timeout)
        limit = client.get_model().limits.max_message_bytes
    except ServiceError as error:
        client.close()
        raise BatchError(f"server {args.server}: {error.details}") from None

    # Failures found while the stream reads files; the stream's own thread fills this.
    local: queue.SimpleQueue[Outcome] = queue.SimpleQueue()

    def requests() -> Iterator[tuple[str, bytes]]:
        for image in images:
            try:
                data = read_image_file(image)
            except ImageError as error:
                local.put(Outcome(image, error=str(error)))
                continue
            # An oversized message would end the whole stream, so it fails here alone.
            size = pb.ExtractRequest(id=image, image=data).ByteSize()
            if size > limit:
                local.put(
                    Outcome(
                        image,
                        error=f"{image}: request of {size} bytes is over the server's message limit of {limit} bytes",
                    )
                )
                continue
            yield image, data

    def drain() -> Iterator[Outcome]:
        while True:
            try:
                yield local.get_nowait()
            except queue.Empty:
                return

    try:
        for item in client.extract_stream(requests()):
            yield from drain()
            if item.ok:
                yield Outcome(item.id, extraction=item.extraction, facts=item.extraction.facts)
            else:
                yield Outcome(item.id, error=item.error or item.error_code or "failed")
        yield from drain()
    except ServiceError as error:
        raise BatchError(f"server {args.server}: stream failed: {error}") from None
    finally:
        client.close()


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m service.batch",
        description="Extract symbols from many images into JSON Lines or ASP facts; reruns skip finished images.",
        epilog=IMAGE_HANDLING,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders to walk for images")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="FILE",
        help="output file; appended to, and read to skip finished images",
    )
    parser.add_argument("--format", choices=("jsonl", "lp"), default="jsonl", help="output format (default: jsonl)")
    parser.add_argument(
        "--server", metavar="HOST:PORT", help="send images to this server instead of running the model in process"
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="FILE",
        help="ONNX model for in-process runs (default: models/sortofclevr.onnx in the project)",
    )
    parser.add_argument(
        "--provider",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="ONNX Runtime execution provider for in-process runs (default: auto)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="ONNX Runtime threads for in-process runs (default: one fewer than the CPUs this process may use,"
        " at least 1, leaving a core to decode files and write records)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, metavar="N", help="images per ONNX Runtime call in process (default: 32)"
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help=f"largest image in pixels (width x height) for in-process runs (default: {DEFAULT_MAX_PIXELS}); larger"
        " images get an error record after only their header is read. With --server the server's --max-pixels applies",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to wait for --server to answer (default: 10)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bar (it shows only when stderr is a terminal)"
    )
    return parser


class _RecordFile:
    """The output file, to which records are written in groups.

    Records wait until an outcome is marked `flush`, such as the last one of a batch, and
    are then written and flushed in one call. Each write to the file can release the GIL,
    and getting it back from the threads that decode images can take longer than building
    a record. Pending records are also written when the run stops, on Ctrl-C or an error.
    """

    def __init__(self, handle: TextIO) -> None:
        self.handle = handle
        self.pending: list[str] = []

    def write(self, text: str) -> None:
        self.pending.append(text)

    def flush(self) -> None:
        if self.pending:
            self.handle.write("".join(self.pending))
            self.pending.clear()
        self.handle.flush()


def run(args: argparse.Namespace, stderr: TextIO) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise BatchError(f"invalid --batch-size {args.batch_size}: at least 1 is needed")
    if args.threads is not None and args.threads < 1:
        raise BatchError(f"invalid --threads {args.threads}: at least 1 is needed")
    if args.connect_timeout <= 0:
        raise BatchError(f"invalid --connect-timeout {args.connect_timeout:g}: use a positive number of seconds")
    if args.max_pixels is not None:
        if args.server:
            raise BatchError("--max-pixels applies to in-process runs; with --server the server's --max-pixels applies")
        if args.max_pixels < MIN_MAX_PIXELS:
            raise BatchError(f"invalid --max-pixels {args.max_pixels}: at least {MIN_MAX_PIXELS} is needed")
    images = collect_images(args.paths)
    if not images:
        raise BatchError(f"no images found in {', '.join(args.paths)}")
    try:
        done = prepare_output(args.out, args.format, images)
    except ForeignText as error:
        raise BatchError(
            f"output {args.out}, line {error.line}: not a {args.format} record of python -m service.batch; "
            "choose another --out, or the --format the file was written with"
        ) from None
    except OSError as error:
        raise BatchError(f"cannot use output {args.out}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise BatchError(f"output {args.out} is not a UTF-8 text file; choose another --out") from None
    pending = [image for image in images if image not in done]

    failed = 0
    runner = run_against_server if args.server else run_in_process
    disable = True if args.no_progress else None  # None: tqdm shows the bar only on a terminal
    with (
        open(args.out, "a", encoding="utf-8") as stream,
        tqdm(
            total=len(images), initial=len(images) - len(pending), unit="image", file=stderr, disable=disable
        ) as progress,
    ):
        if pending:
            output = _RecordFile(stream)
            try:
                for outcome in runner(pending, args):
                    if outcome.error is not None:
                        failed += 1
                        output.write(format_record(args.format, outcome.image, error=outcome.error))
                    elif outcome.text is not None:
                        output.write(outcome.text)
                    else:
                        output.write(
                            format_record(
                                args.format, outcome.image, extraction=outcome.extraction, facts=outcome.facts
                            )
                        )
                    if outcome.flush:
                        output.flush()
                    progress.update(1)
            finally:
                output.flush()

    skipped = len(images) - len(pending)
    if failed:
        print(f"{failed} of {len(images)} files failed; their error records are in {args.out}", file=stderr)
        return EXIT_FILES_FAILED
    if skipped:
        print(f"{len(pending)} of {len(images)} images extracted; {skipped} were already in {args.out}", file=stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args, sys.stderr)
    except BatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to continue where {args.out} ends", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
