"""Measure the model on one execution provider: graph throughput at several batch sizes, then gRPC throughput.

    benchmarks/gpu.sh                                  # installs onnxruntime-gpu into .venv-gpu, then runs --provider cuda
    python -m benchmarks.gpu --provider cuda           # where onnxruntime-gpu is already installed
    python -m benchmarks.gpu --provider cpu --quick    # the same measuring code on the CPU, as the smoke test runs it

The script first checks that ONNX Runtime really runs on the requested provider: the
session's `get_providers()` must contain it (CUDAExecutionProvider for cuda), and the
server must report it through GetModel. Then it times `InferenceSession.run` on batches
of Sort-of-CLEVR scenes (host arrays in and out, so host-device copies count) and drives
a `python -m service --provider PROVIDER` subprocess with concurrent unary Extract calls.
It prints one JSON object on stdout. It exits 1 with one line on stderr when the provider
is not in use or the server does not start.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from service.cli import ArgumentParser

from .grpc_load import CLIENTS, encoded_scenes, measure_throughput, serialized_requests, start_server

ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class ProviderNotUsed(RuntimeError):
    """ONNX Runtime does not run on the requested execution provider."""


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda", help="execution provider to measure (default: cuda)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "sortofclevr.onnx", help="ONNX model to measure")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 1024], help="batch sizes of the graph runs (default: 1 64 1024)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"concurrent unary Extract calls against the server (default: {CLIENTS})")
    parser.add_argument("--server-batch-size", type=int, default=64, help="the server's --max-batch-size (default: 64)")
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per batch size and per load window (default: 3)")
    parser.add_argument("--quick", action="store_true", help="short runs that only check that the script works; not for quoting")
    parser.add_argument("--out", type=Path, help="also write the JSON summary to this file")
    return parser


def gpu_names() -> list[str]:
    """Return `nvidia-smi`'s name, driver and memory line per GPU, or an empty list without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def check_session(extractor, provider: str) -> list[str]:
    """Return the session's providers; raise ProviderNotUsed unless the requested one is among them."""
    providers = extractor.session.get_providers()
    if PROVIDERS[provider] not in providers:
        raise ProviderNotUsed(f"the session runs on {providers}, not on {PROVIDERS[provider]}")
    return providers


def time_batches(extractor, images: np.ndarray, batch_size: int, *, seconds: float, min_runs: int) -> dict[str, float]:
    """Time `extractor.run` on one batch of `batch_size` images until `seconds` and `min_runs` have both passed."""
    batch = np.ascontiguousarray(images[np.arange(batch_size) % len(images)])
    extractor.run(batch)  # warm-up: allocations, and kernel selection on CUDA
    runs = 0
    fastest = float("inf")
    start = time.perf_counter()
    while True:
        before = time.perf_counter()
        extractor.run(batch)
        fastest = min(fastest, time.perf_counter() - before)
        runs += 1
        elapsed = time.perf_counter() - start
        if runs >= min_runs and elapsed >= seconds:
            break
    return {
        "runs": runs,
        "images_per_s": runs * batch_size / elapsed,
        "fastest_images_per_s": batch_size / fastest,
        "mean_ms_per_batch": 1e3 * elapsed / runs,
    }


def measure(args) -> dict:
    """Run every measurement and return the JSON summary; raises ProviderNotUsed as described in the module doc."""
    import onnxruntime as ort

    from service.client import SymbolsClient
    from service.cpus import usable_cpus
    from service.images import load_image
    from service.inference import Extractor

    seconds = 0.2 if args.quick else args.seconds
    min_runs = 1 if args.quick else 5
    repeats = 1 if args.quick else 3

    extractor = Extractor.load(args.model, provider=args.provider, threads=usable_cpus())
    providers = check_session(extractor, args.provider)

    encoded = encoded_scenes(64)
    images = np.stack([load_image(data) for data in encoded])
    batches = {
        str(size): time_batches(extractor, images, size, seconds=seconds, min_runs=min_runs) for size in args.batch_sizes
    }

    server = start_server(args.model, provider=args.provider, extra=["--max-batch-size", str(args.server_batch_size)])
    try:
        with SymbolsClient(server.address, timeout=60) as client:
            served_provider = client.get_model().provider
        if served_provider != PROVIDERS[args.provider]:
            raise ProviderNotUsed(f"the server runs on {served_provider}, not on {PROVIDERS[args.provider]}")
        load = measure_throughput(
            server, serialized_requests(encoded), seconds=seconds * 2, repeats=repeats, clients=args.clients
        )
        memory = server.memory_kib()
    finally:
        server.stop()

    return {
        "provider": args.provider,
        "session_providers": providers,
        "onnxruntime_version": ort.__version__,
        "onnxruntime_device": ort.get_device(),
        "gpus": gpu_names(),
        "python": platform.python_version(),
        "model": str(args.model),
        "quick": args.quick,
        "batches": batches,
        "grpc": {
            "clients": args.clients,
            "server_max_batch_size": args.server_batch_size,
            "server_provider": served_provider,
            "images_per_s": load.images_per_s,
            "completed": load.completed,
            "server_cpu_ms_per_image": 1e3 * (load.server_cpu_seconds or 0.0) / load.completed,
            "client_cpu_ms_per_image": 1e3 * load.client_cpu_seconds / load.completed,
            "server_peak_rss_mib": memory["VmHWM"] / 1024,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, values in (("--batch-sizes", args.batch_sizes), ("--clients", [args.clients]), ("--server-batch-size", [args.server_batch_size])):
        if min(values) < 1:
            parser.error(f"invalid {name} {min(values)}: it must be at least 1")
    try:
        summary = measure(args)
    except RuntimeError as error:
        # ProviderNotUsed, ModelError from Extractor.load, or a server that did not start.
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(summary, indent=2)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
