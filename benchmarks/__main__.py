"""Run benchmark sections, store their results in docs/benchmarks.json and rewrite the table in docs/benchmarks.md.

    python -m benchmarks                       # every default section
    python -m benchmarks --sections grpc       # one section; the stored results of the others stay

Each section keeps the date, machine and command of the run that produced it, so a table
built from several runs still names where each number came from.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
from pathlib import Path

from service.cli import ArgumentParser

from .common import Section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.json"
PAGE = ROOT / "docs" / "benchmarks.md"
TABLE_START = "<!-- results table: written by python -m benchmarks -->"
TABLE_END = "<!-- end of results table -->"

# Section name -> module under benchmarks/ with `run(args) -> Section`.
SECTIONS = {
    "inference": "benchmarks.inference",
    "batch": "benchmarks.batch",
    "grpc": "benchmarks.grpc_load",
    "reasoning": "benchmarks.reasoning",
    "training": "benchmarks.training",
}
# Training reruns both default configurations (about half an hour), so it runs only when named.
DEFAULT_SECTIONS = ["inference", "batch", "grpc", "reasoning"]


def machine() -> dict[str, str | int]:
    """Describe the machine: CPU model, usable cores, memory, OS and library versions."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for package in ("numpy", "onnxruntime", "torch", "grpc", "clingo"):
        try:
            versions[package] = getattr(importlib.import_module(package), "__version__", "unknown")
        except ImportError:
            versions[package] = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **{f"{name}_version": str(version) for name, version in versions.items()},
    }


def _format_ratio(value: float) -> str:
    return f"{value:.2f}"


def render_table(stored: dict) -> str:
    """Build the markdown results table from the stored sections, in the order of SECTIONS."""
    lines = [TABLE_START, "", "| section | comparison | measured | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for name in SECTIONS:
        section = stored.get(name)
        if not section:
            continue
        for comparison in section["comparisons"]:
            target = ""
            if comparison["target"] is not None:
                sign = ">=" if comparison["direction"] == "min" else "<="
                target = f"{sign} {comparison['target']:g}"
            met = {True: "yes", False: "**no**", None: ""}[comparison["met"]]
            lines.append(
                f"| {name} | {comparison['name']} | {comparison['measured']} | {_format_ratio(comparison['ratio'])} | {target} | {met} |"
            )
    lines.append("")
    for name in SECTIONS:
        section = stored.get(name)
        if not section:
            continue
        run = section["run"]
        lines.append(f"- `{name}`: {run['date']}, `{run['command']}`, {run['machine']['cpu']}, {run['machine']['cores']} cores.")
        for note in section.get("notes", []):
            lines.append(f"  {note}")
    lines += ["", TABLE_END]
    return "\n".join(lines)


def write_page(stored: dict) -> None:
    """Replace the table between the markers in docs/benchmarks.md, or append it when the markers are missing."""
    table = render_table(stored)
    text = PAGE.read_text() if PAGE.exists() else "# Benchmarks\n"
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        _, tail = rest.split(TABLE_END, 1)
        text = head + table + tail
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    PAGE.write_text(text)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=sorted(SECTIONS),
        default=DEFAULT_SECTIONS,
        help=f"sections to run (default: {' '.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "sortofclevr.onnx", help="ONNX model to measure")
    parser.add_argument("--dev-set", type=Path, default=ROOT.parent / "shared" / "benchmarks" / "sortofclevr-dev", help="Sort-of-CLEVR question folder for the reasoning section")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON file that stores every section's latest results (default: docs/benchmarks.json; with --quick, none unless given)",
    )
    parser.add_argument("--no-page", action="store_true", help="do not rewrite the table in docs/benchmarks.md")
    parser.add_argument(
        "--training-runs",
        type=Path,
        default=None,
        help="training section: read DIR/<world>/metrics.json of finished runs instead of training again",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller loads, to check that the sections run; not for quoting")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.results is None and not args.quick:
        args.results = RESULTS
    stored = json.loads(args.results.read_text()) if args.results and args.results.exists() else {}
    run_info = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "quick": args.quick,
    }
    failed = []
    for name in args.sections:
        print(f"== {name}", flush=True)
        module = importlib.import_module(SECTIONS[name])
        section: Section = module.run(args)
        for comparison in section.comparisons:
            met = {True: "met", False: "NOT MET", None: "no target"}[comparison.met]
            print(f"   {comparison.name}: {comparison.ratio:.3f} ({comparison.measured}) [{met}]", flush=True)
            if comparison.met is False:
                failed.append(f"{name}: {comparison.name}")
        stored[name] = {**section.to_json(), "run": run_info}
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(stored, indent=2) + "\n")
    if not args.no_page and not args.quick:
        write_page(stored)
    if failed:
        print("targets not met: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
