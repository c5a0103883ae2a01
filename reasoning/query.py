"""Command line: decode images into facts and answer an ASP query over each image.

    python -m reasoning.query IMAGE... [--program FILE.lp] [--query RULES] [--show PRED/N] [--json]

Images are decoded in this process with the default model unless `--server` names a
running service. Each image is solved on its own, in a worker process with limits.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from service.cli import ArgumentParser, silence_broken_stdout
from service.images import DEFAULT_MAX_PIXELS, IMAGE_HANDLING, MIN_MAX_PIXELS
from service.schema import Extraction

from .engine import ALTERNATIVES_RULES, LIBRARY, Answer, Limits, ReasoningPool
from .errors import ProgramError, ReasoningError
from .facts import extraction_facts, render_facts
from .program import check_program

__all__ = ["main", "build_parser"]

DEFAULT_UNCERTAIN_BELOW = 0.9
_SIGNATURE = re.compile(r"^(_*[a-z][A-Za-z0-9_']*)/([0-9]+)$")


class UsageError(Exception):
    """A command-line value that cannot be used; printed as one line."""


class ImageFailure(Exception):
    """One image that cannot be read or decoded; the command reports it and goes on to the next."""


@dataclass
class Source:
    """One piece of the user program and the first line it occupies in the combined text."""

    label: str
    text: str
    first_line: int = 1


def _signature(value: str) -> tuple[str, int]:
    match = _SIGNATURE.match(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid predicate {value!r}: expected NAME/ARITY, for example answer/2")
    return match[1], int(match[2])


def build_parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = ArgumentParser(
        prog="python -m reasoning.query",
        description="Decode images into ASP facts and answer a clingo query over each image.",
        epilog=IMAGE_HANDLING,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to decode")

    # Perception
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="ONNX model file (default: models/sortofclevr.onnx)")
    source.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="decode images with a running service instead; its own --max-pixels setting then applies",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help=f"largest image in pixels (width x height) decoded in process (default: {DEFAULT_MAX_PIXELS}); larger"
        " images are rejected after reading only their header",
    )

    # Program and output
    parser.add_argument(
        "--program", type=Path, action="append", default=[], metavar="FILE.lp", help="ASP program file (repeatable)"
    )
    parser.add_argument("--query", action="append", default=[], metavar="RULES", help="ASP rules given inline (repeatable)")
    parser.add_argument(
        "--show",
        type=_signature,
        action="append",
        metavar="PRED/N",
        help="report atoms of this predicate (repeatable); default: the program's #show, else the predicates it"
        " defines. Without --program, --query and --show only the facts are printed",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--facts-only", action="store_true", help="print the facts as ASP and do not reason")
    parser.add_argument(
        "--no-library", action="store_true", help="do not load the rule library (spatial.lp, attributes.lp)"
    )
    parser.add_argument("--models", type=int, default=1, help="answer sets to report, 0 for all up to 100 (default: 1)")

    # Uncertain attributes
    parser.add_argument(
        "--alternatives",
        type=int,
        default=0,
        metavar="K",
        help="turn uncertain attributes into a choice over their top-K values and report certain and possible"
        " answers (default: 0, off)",
    )
    parser.add_argument(
        "--uncertain-below",
        type=float,
        default=DEFAULT_UNCERTAIN_BELOW,
        metavar="P",
        help=f"with --alternatives, confidence below which an attribute is uncertain (default: {DEFAULT_UNCERTAIN_BELOW})",
    )

    # Limits
    parser.add_argument(
        "--wall-seconds",
        type=float,
        default=defaults.wall_seconds,
        help=f"wall-clock limit per image for grounding and solving, in seconds (default: {defaults.wall_seconds:g})",
    )
    parser.add_argument(
        "--memory-mib",
        type=int,
        default=defaults.memory_mib,
        help=f"memory limit per image for grounding and solving, in MiB (default: {defaults.memory_mib})",
    )
    parser.add_argument("--verbose", action="store_true", help="log progress and worker restarts to stderr")
    return parser


def _read_sources(args: argparse.Namespace) -> list[Source]:
    sources = []
    for path in args.program:
        try:
            sources.append(Source(str(path), path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UsageError(f"program file {path} not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read program file {path}: {error}") from None
    for number, text in enumerate(args.query, start=1):
        label = "--query" if len(args.query) == 1 else f"--query #{number}"
        sources.append(Source(label, text))
    line = 1
    for source in sources:
        source.first_line = line
        line += source.text.count("\n") + 1
    return sources


def _locate(error: ProgramError, sources: list[Source]) -> str:
    """Rewrite "line L, column C: ..." of the combined program to the source it came from."""
    message = str(error)
    if error.line is None or not sources:
        return message
    owner = sources[0]
    for source in sources:
        if source.first_line <= error.line:
            owner = source
    prefix = f"line {error.line}, column {error.column}: "
    rest = message[len(prefix) :] if message.startswith(prefix) else message
    return f"{owner.label}: line {error.line - owner.first_line + 1}, column {error.column}: {rest}"


def _check_sources(sources: list[Source], limits: Limits) -> None:
    for source in sources:
        try:
            check_program(source.text, max_bytes=limits.program_bytes)
        except ProgramError as error:
            raise ReasoningError(f"{source.label}: {error}") from None


class _Perception:
    """Decodes image files, in process or through a running service."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.server = args.server
        self.max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
        if args.server:
            try:
                from service.client import ServiceError, SymbolsClient
                from service.images import ImageError, read_image_file
            except ImportError as error:
                raise UsageError(f"--server is not available: {error}") from None
            self.client = SymbolsClient(args.server)
            self.service_error = ServiceError
            self.read_image_file = read_image_file
            self.image_error = ImageError
            return
        try:
            from service.images import ImageError, PixelLimitError, load_image
            from service.inference import Extractor
        except ImportError as error:
            raise UsageError(f"in-process decoding is not available: {error}; use --server HOST:PORT") from None
        self.load_image = load_image
        self.pixel_limit_error = PixelLimitError
        self.image_error = ImageError
        options = {}
        if args.alternatives and "top_k" in inspect.signature(Extractor.load).parameters:
            options["top_k"] = args.alternatives
        self.extractor = Extractor.load(args.model, **options)

    def extract(self, path: Path) -> Extraction:
        """Decode one image; raises ImageFailure for a problem with this image alone."""
        if self.server:
            try:
                data = self.read_image_file(path)
            except self.image_error as error:
                raise ImageFailure(str(error)) from None
            try:
                return self.client.extract(data, str(path))
            except self.service_error as error:
                raise _server_failure(self.server, error) from None
        try:
            image = self.load_image(path, max_pixels=self.max_pixels)
        except self.pixel_limit_error as error:
            raise ImageFailure(f"{error} (--max-pixels)") from None
        except self.image_error as error:
            raise ImageFailure(str(error)) from None
        return self.extractor.extract([image], [str(path)])[0]


def _server_failure(address: str, error) -> Exception:
    """Return the exception for a failed Extract call, with one line that names the server.

    The server rejects a bad image with INVALID_ARGUMENT. It returns RESOURCE_EXHAUSTED
    when the image is over its pixel or message limit or when it has too many calls at
    once. Both fail that image alone, and a rerun may succeed. Any other status stops the run.
    """
    import grpc

    if error.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return ImageFailure(f"server {address}: {error.details}")
    if error.code == grpc.StatusCode.UNAVAILABLE:
        # gRPC's text ends with the socket error, for example "Connection refused".
        reason = error.details.rsplit(": ", 1)[-1].strip()
        return UsageError(f"cannot reach server {address}: {reason}; check that python -m service runs there")
    return UsageError(f"server {address}: {error.details}")


def _answer_json(answer: Answer | None) -> dict | None:
    if answer is None:
        return None
    return answer.model_dump(exclude={"seconds"})


def _print_text(extraction: Extraction, facts: list, answer: Answer | None, out) -> None:
    print(f"% image: {extraction.image} ({extraction.width} x {extraction.height})", file=out)
    out.write(render_facts(facts))
    if answer is None:
        return
    if answer.satisfiable is False:
        print("% unsatisfiable", file=out)
        return
    if answer.certain is not None:
        print("% certain (true in every answer set)", file=out)
        out.write("".join(f"{atom}.\n" for atom in answer.certain))
        print("% possible (true in some answer set)", file=out)
        out.write("".join(f"{atom}.\n" for atom in answer.possible or []))
        return
    for number, model in enumerate(answer.models, start=1):
        print(f"% answer set {number}", file=out)
        out.write("".join(f"{atom}.\n" for atom in model))


def run(args: argparse.Namespace, out=sys.stdout) -> int:
    if args.alternatives == 1 or args.alternatives < 0:
        raise UsageError(f"invalid --alternatives {args.alternatives}: use 0 (off) or at least 2")
    if not 0.0 <= args.uncertain_below <= 1.0:
        raise UsageError(f"invalid --uncertain-below {args.uncertain_below}: use a probability in [0, 1]")
    if args.models < 0:
        raise UsageError(f"invalid --models {args.models}: use 0 or more")
    if args.wall_seconds <= 0:
        raise UsageError(f"invalid --wall-seconds {args.wall_seconds}: use a positive number of seconds")
    if args.memory_mib < 16:
        raise UsageError(f"invalid --memory-mib {args.memory_mib}: use at least 16")
    if args.max_pixels is not None:
        if args.server:
            raise UsageError("--max-pixels applies to in-process decoding; with --server the server's --max-pixels applies")
        if args.max_pixels < MIN_MAX_PIXELS:
            raise UsageError(f"invalid --max-pixels {args.max_pixels}: use at least {MIN_MAX_PIXELS}")

    limits = Limits(
        wall_seconds=args.wall_seconds, memory_mib=args.memory_mib, max_models=max(Limits().max_models, args.models)
    )
    sources = _read_sources(args)
    reasoning = bool(sources or args.show) and not args.facts_only
    if reasoning:
        _check_sources(sources, limits)
    program = "\n".join(source.text for source in sources)
    library = [] if args.no_library else list(LIBRARY)
    if args.alternatives:
        library.append(ALTERNATIVES_RULES)

    images = [Path(image) for image in args.images]
    perception = _Perception(args)
    pool = ReasoningPool(limits) if reasoning else None
    documents = []
    failed = 0
    try:
        for path in images:
            try:
                extraction = perception.extract(path)
            except ImageFailure as failure:
                failed += 1
                print(f"error: {_one_line(failure)}", file=sys.stderr)
                if args.json:
                    documents.append({"image": str(path), "error": _one_line(failure)})
                else:
                    # A comment line, so that the text output stays a valid ASP program.
                    print(f"% error: {_one_line(failure)}", file=out)
                continue
            facts = extraction_facts(
                extraction, alternatives=args.alternatives, uncertain_below=args.uncertain_below
            )
            answer = None
            if pool is not None:
                try:
                    answer = pool.solve(
                        facts,
                        program,
                        args.show,
                        library=library,
                        models=args.models,
                        consequences=args.alternatives > 0,
                    )
                except ProgramError as error:
                    raise ReasoningError(_locate(error, sources)) from None
                for warning in answer.warnings:
                    print(f"warning: {path}: {warning}", file=sys.stderr)
            if args.json:
                documents.append(
                    {
                        "image": extraction.image,
                        "width": extraction.width,
                        "height": extraction.height,
                        "facts": [str(fact) for fact in facts],
                        "answer": _answer_json(answer),
                    }
                )
            else:
                _print_text(extraction, facts, answer, out)
    finally:
        if pool is not None:
            pool.close()

    if args.json:
        json.dump({"images": documents}, out, indent=2)
        out.write("\n")
    out.flush()
    if failed and len(images) > 1:
        print(f"{failed} of {len(images)} images failed", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Ignored EXIF and other decoding notes stay visible: the help promises they are logged.
        logging.getLogger("service.images").setLevel(logging.WARNING)
    try:
        return run(args)
    except BrokenPipeError:
        return silence_broken_stdout()
    except (UsageError, ReasoningError, ValueError, OSError, RuntimeError) as error:
        # ModelError, SymbolTableError and FactsError all land here as one line.
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a client or library error still gets one line, no traceback
        print(f"error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
