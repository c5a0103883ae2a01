"""Soak test of the served model: memory over many Query calls, and Extract under concurrent load.

    python -m benchmarks.soak                                  # the full soak, as `make soak` runs it
    python -m benchmarks.soak --queries 300 --extracts 500 --clients 8 --no-memory-check --no-page

Both parts run against a real `python -m service` subprocess on 127.0.0.1:

1. `--queries` Query calls (one image and a small program each) from `--query-clients`
   clients. The server's resident memory (VmRSS of the server process from
   /proc/PID/status) is read after each tenth of the calls. The soak fails when it grew
   by more than `--max-rss-growth` from the first reading to the last. The reasoning workers
   are separate processes that are replaced every 200 jobs, so they are not part of the
   checked number; their resident memory is reported next to it as the process tree.
2. `--extracts` Extract calls from `--clients` concurrent clients, each a thread with its
   own channel that sends its next call when the previous one returns. Every call must
   succeed; the p50 and p99 latency seen by the clients are reported. The clients share
   the machine's cores with the server, so the latencies include their own CPU time.

Results go to `--out` (JSON) and to the region between the soak markers in
`docs/benchmarks.md`. Exit status: 0 when every call succeeded and memory stayed within
the limit, 1 when not, 2 when the server could not start.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from service.cli import ArgumentParser

from .common import percentile

__all__ = ["ExtractLoad", "QuerySoak", "main", "process_tree_rss_kib", "render_region", "write_region"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "soak.json"
DEFAULT_PAGE = ROOT / "docs" / "benchmarks.md"
DEFAULT_MODEL = ROOT / "models" / "sortofclevr.onnx"
REGION_START = "<!-- soak results: written by make soak -->"
REGION_END = "<!-- end of soak results -->"
QUERY_PROGRAM = "west_square(O) :- left_half(O), shape(O, square)."
CALL_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- memory


def rss_kib(pid: int) -> int:
    """Return VmRSS of process `pid` in KiB, or 0 when it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no VmRSS line


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of /proc/PID/stat is the parent pid; the command name in field 2 may contain spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree_rss_kib(pid: int) -> int:
    """Return the summed VmRSS of `pid` and all its descendants, in KiB.

    Pages shared between the processes (the forkserver's imports, for example) count once
    per process, so the sum overstates the memory in use.
    """
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        total += rss_kib(current)
        pending.extend(_children(current))
    return total


# --------------------------------------------------------------------------- the two parts


@dataclass
class MemorySample:
    calls: int
    server_rss_kib: int
    tree_rss_kib: int


@dataclass
class QuerySoak:
    calls: int
    clients: int
    failures: int
    failure_examples: list[str]
    samples: list[MemorySample]  # after the first tenth of the calls, then after each further tenth
    max_growth: float  # allowed growth of the server's VmRSS from the first sample to the last, as a fraction

    @property
    def growth(self) -> float:
        first, last = self.samples[0].server_rss_kib, self.samples[-1].server_rss_kib
        return (last - first) / first

    def to_json(self) -> dict:
        return {**asdict(self), "growth": self.growth}


@dataclass
class ExtractLoad:
    calls: int
    clients: int
    failures: int
    failure_examples: list[str]
    seconds: float
    latencies_ms: list[float] = field(repr=False)

    def to_json(self) -> dict:
        values = self.latencies_ms
        return {
            "calls": self.calls,
            "clients": self.clients,
            "failures": self.failures,
            "failure_examples": self.failure_examples,
            "seconds": self.seconds,
            "calls_per_s": len(values) / self.seconds if self.seconds else 0.0,
            "p50_ms": percentile(values, 50) if values else None,
            "p99_ms": percentile(values, 99) if values else None,
            "max_ms": max(values) if values else None,
        }


def _run_calls(count: int, clients: int, make_call) -> tuple[int, list[str], list[float]]:
    """Run `count` calls from `clients` threads, each with its own `make_call()`; return failures, examples, latencies."""
    import grpc

    lock = threading.Lock()
    state = {"next": 0, "failures": 0}
    examples: list[str] = []
    latencies: list[float] = []

    def client() -> None:
        call, close = make_call()
        try:
            while True:
                with lock:
                    if state["next"] >= count:
                        return
                    index = state["next"]
                    state["next"] += 1
                started = time.perf_counter()
                try:
                    call(index)
                except grpc.RpcError as error:
                    with lock:
                        state["failures"] += 1
                        if len(examples) < 5:
                            examples.append(f"call {index}: {error.code().name}: {error.details()}")
                    continue
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed * 1000.0)
        finally:
            close()

    threads = [threading.Thread(target=client, name=f"soak-client-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return state["failures"], examples, latencies


def _channel_factory(address: str, build):
    """Return a `make_call` for `_run_calls`: a fresh channel per client and `build(stub)` as its call."""
    import grpc

    from service._proto import symbols_pb2_grpc as pb_grpc

    def make_call():
        channel = grpc.insecure_channel(address)
        return build(pb_grpc.SymbolsStub(channel)), channel.close

    return make_call


def soak_queries(server, images: list[bytes], *, calls: int, clients: int, max_growth: float) -> QuerySoak:
    """Send `calls` Query calls and sample the server's memory after each tenth of them."""
    from service._proto import symbols_pb2 as pb

    requests = [
        pb.QueryRequest(id=f"soak-{n}", images=[pb.ExtractRequest(id="scene", image=data)], program=QUERY_PROGRAM)
        for n, data in enumerate(images)
    ]

    def build(stub):
        return lambda index: stub.Query(requests[index % len(requests)], timeout=CALL_TIMEOUT_S)

    make_call = _channel_factory(server.address, build)
    step = max(1, calls // 10)
    samples: list[MemorySample] = []
    failures = 0
    examples: list[str] = []
    done = 0
    while done < calls:
        batch = min(step, calls - done)
        failed, batch_examples, _ = _run_calls(batch, clients, make_call)
        failures += failed
        examples.extend(batch_examples[: 5 - len(examples)])
        done += batch
        samples.append(MemorySample(done, rss_kib(server.pid), process_tree_rss_kib(server.pid)))
        print(
            f"query {done}/{calls}: server VmRSS {samples[-1].server_rss_kib / 1024:.1f} MiB,"
            f" with workers {samples[-1].tree_rss_kib / 1024:.1f} MiB, failures {failures}",
            file=sys.stderr,
        )
    return QuerySoak(calls, clients, failures, examples, samples, max_growth)


def load_extracts(server, images: list[bytes], *, calls: int, clients: int) -> ExtractLoad:
    """Send `calls` Extract calls from `clients` concurrent clients and record each call's latency."""
    from service._proto import symbols_pb2 as pb

    requests = [pb.ExtractRequest(id=f"soak-{n}", image=data) for n, data in enumerate(images)]

    def build(stub):
        return lambda index: stub.Extract(requests[index % len(requests)], timeout=CALL_TIMEOUT_S)

    started = time.perf_counter()
    failures, examples, latencies = _run_calls(calls, clients, _channel_factory(server.address, build))
    seconds = time.perf_counter() - started
    print(f"extract {calls} calls at {clients} clients: {failures} failures in {seconds:.1f} s", file=sys.stderr)
    return ExtractLoad(calls, clients, failures, examples, seconds, latencies)


# --------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def render_region(result: dict) -> str:
    """Build the markdown between the soak markers from a result written by this script."""
    query, extract, run = result["query"], result["extract"], result["run"]
    first, last = query["samples"][0], query["samples"][-1]
    memory_check = "not checked" if result["memory_checked"] is False else f"limit {query['max_growth']:.0%}"
    lines = [
        REGION_START,
        "",
        "| part | calls | clients | failures | result |",
        "| --- | ---: | ---: | ---: | --- |",
        (
            f"| Query, memory | {query['calls']} | {query['clients']} | {query['failures']} |"
            f" server VmRSS {first['server_rss_kib'] / 1024:.1f} MiB after {first['calls']} calls,"
            f" {last['server_rss_kib'] / 1024:.1f} MiB after {last['calls']}:"
            f" {query['growth']:+.1%} ({memory_check}) |"
        ),
        (
            f"| Extract, load | {extract['calls']} | {extract['clients']} | {extract['failures']} |"
            f" p50 {_ms(extract['p50_ms'])}, p99 {_ms(extract['p99_ms'])},"
            f" {extract['calls_per_s']:.0f} calls/s |"
        ),
        "",
        (
            f"With the reasoning workers, the process tree used {first['tree_rss_kib'] / 1024:.1f} MiB after"
            f" {first['calls']} Query calls and {last['tree_rss_kib'] / 1024:.1f} MiB after {last['calls']}."
        ),
        f"Run: {run['date']}, `{run['command']}`, {run['machine']['cpu']}, {run['machine']['cores']} cores.",
        f"Result: {'passed' if result['passed'] else 'FAILED'}.",
        "",
        REGION_END,
    ]
    return "\n".join(lines)


def write_region(page: Path, result: dict) -> None:
    """Replace the region between the soak markers in `page`; raise ValueError when a marker is missing."""
    text = page.read_text(encoding="utf-8")
    if REGION_START not in text or REGION_END not in text:
        raise ValueError(f"{page}: the markers {REGION_START!r} and {REGION_END!r} are missing; add them first")
    head, rest = text.split(REGION_START, 1)
    _, tail = rest.split(REGION_END, 1)
    page.write_text(head + render_region(result) + tail, encoding="utf-8")


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="ONNX model file the server loads")
    parser.add_argument("--queries", type=int, default=10_000, help="number of Query calls (default 10000)")
    parser.add_argument(
        "--query-clients", type=int, default=4, help="concurrent clients sending the Query calls (default 4)"
    )
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=0.10,
        help="allowed growth of the server's VmRSS from the first tenth of the Query calls to the end,"
        " as a fraction (default 0.10)",
    )
    parser.add_argument("--no-memory-check", action="store_true", help="report memory growth without checking it")
    parser.add_argument("--extracts", type=int, default=10_000, help="number of Extract calls (default 10000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients sending Extract calls (default 32)")
    parser.add_argument("--images", type=int, default=64, help="distinct scenes the calls cycle through (default 64)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file (default docs/soak.json)")
    parser.add_argument("--page", type=Path, default=DEFAULT_PAGE, help="page whose soak region is rewritten")
    parser.add_argument("--no-page", action="store_true", help="do not rewrite the soak region of --page")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("queries", "query_clients", "extracts", "clients", "images"):
        if getattr(args, name) < 1:
            parser.error(f"invalid --{name.replace('_', '-')} {getattr(args, name)}: at least 1 is needed")
    if args.max_rss_growth < 0:
        parser.error(f"invalid --max-rss-growth {args.max_rss_growth}: it cannot be negative")

    from .__main__ import machine
    from .grpc_load import encoded_scenes, start_server

    images = encoded_scenes(args.images, seed=0)
    # The server's own limit must admit every client at once, with room for health checks.
    concurrency = max(args.clients, args.query_clients) + 8
    try:
        server = start_server(args.model, extra=["--max-concurrent-rpcs", str(concurrency)])
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        query = soak_queries(
            server, images, calls=args.queries, clients=args.query_clients, max_growth=args.max_rss_growth
        )
        extract = load_extracts(server, images, calls=args.extracts, clients=args.clients)
    finally:
        server.stop()

    memory_ok = args.no_memory_check or query.growth <= args.max_rss_growth
    passed = query.failures == 0 and extract.failures == 0 and memory_ok
    command = "python -m benchmarks.soak" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    result = {
        "run": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command,
            "machine": machine(),
            "memory_measured": "server_rss_kib: the server process; tree_rss_kib adds the forkserver and reasoning workers",
        },
        "query": query.to_json(),
        "extract": extract.to_json(),
        "memory_checked": not args.no_memory_check,
        "passed": passed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not args.no_page:
        try:
            write_region(args.page, result)
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    extract_json = result["extract"]
    print(
        f"Query: {query.calls} calls, {query.failures} failures, server VmRSS growth {query.growth:+.1%}"
        f" (limit {args.max_rss_growth:.0%}{', not checked' if args.no_memory_check else ''});"
        f" Extract: {extract.calls} calls at {extract.clients} clients, {extract.failures} failures,"
        f" p50 {_ms(extract_json['p50_ms'])}, p99 {_ms(extract_json['p99_ms'])}"
    )
    if not passed:
        reasons = []
        if query.failures or extract.failures:
            examples = (query.failure_examples + extract.failure_examples)[:3]
            reasons.append(f"{query.failures + extract.failures} calls failed, for example {examples}")
        if not memory_ok:
            reasons.append(f"server VmRSS grew by {query.growth:.1%}, over the limit of {args.max_rss_growth:.0%}")
        print(f"error: soak failed: {'; '.join(reasons)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
