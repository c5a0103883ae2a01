"""Run the gRPC server: `python -m service [--model FILE] [--port N] ...`; see `--help` for every setting."""

from __future__ import annotations

import logging
import signal
import sys
import threading

from .settings import SettingsError, load_settings

log = logging.getLogger("service")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    # Imported after the settings so that --help and bad flags return without importing gRPC.
    from .cpus import usable_cpus
    from .inference import Extractor, ModelError
    from .server import create_server
    from .symbols import SymbolTableError

    # The model loads before the port opens, so a bad model file fails with one line and
    # nothing is ever announced as listening.
    threads = settings.threads or usable_cpus()
    try:
        extractor = Extractor.load(settings.model, provider=settings.provider, threads=threads, spin=False)
    except (ModelError, SymbolTableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("ONNX Runtime intra-op threads: %d", threads)
    try:
        server, _ = create_server(settings, extractor=extractor)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        server.start()
    except (ModelError, SymbolTableError) as error:
        server.stop(0)
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Signal handlers run on the main thread, so it waits here and stops the server itself.
    while not stop_requested.wait(1.0):
        pass
    server.stop(settings.grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
