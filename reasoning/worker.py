"""Entry point of a reasoning worker process: run jobs from a pipe under a memory limit.

Protocol: the worker sends ("ready", pid), then sends one reply tuple for every Job it
receives, and exits on None or when the pipe closes. Replies are
("ok", Outcome), ("program", message, line, column), ("limit", limit, message) and
("error", message). After a memory error the worker exits, because clingo's state is
not reliable after a failed allocation.
"""

from __future__ import annotations

import os
import resource
from multiprocessing.connection import Connection

from .errors import LimitExceeded, ProgramError
from .solver import Job, run_job

__all__ = ["serve"]


def _address_space() -> int:
    """Return the current virtual memory size of this process in bytes."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[0])
    return pages * resource.getpagesize()


def _limit_memory(job_bytes: int) -> None:
    """Let the address space grow by at most `job_bytes` over its current size.

    The limit is relative because a worker whose start imported a large main module (a
    server that loads ONNX Runtime, for example) already maps that memory.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = _address_space() + job_bytes
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _memory_message(job: Job) -> str:
    return (
        f"memory limit of {job.memory_bytes // 2**20} MiB (memory_mib) exceeded while grounding or solving;"
        " the worker was replaced. Simplify the program or raise the limit"
    )


def serve(connection: Connection) -> None:
    """Serve jobs over `connection` until it closes or sends None."""
    # A parent that exits or is killed closes the pipe. recv then raises EOFError, or
    # ConnectionResetError when the parent left a message unread, and send raises
    # BrokenPipeError. No one can read a reply any more, so the worker exits with status 0.
    pipe_closed = (EOFError, ConnectionResetError, BrokenPipeError)
    try:
        connection.send(("ready", os.getpid()))
    except pipe_closed:
        return
    while True:
        try:
            job = connection.recv()
        except pipe_closed:
            return
        if job is None:
            return

        stop = False
        try:
            _limit_memory(job.memory_bytes)
            reply: tuple = ("ok", run_job(job))
        except MemoryError:
            reply = ("limit", "memory_mib", _memory_message(job))
            stop = True
        except ProgramError as error:
            reply = ("program", str(error), error.line, error.column)
        except LimitExceeded as error:
            reply = ("limit", error.limit, str(error))
        except RuntimeError as error:
            # NOTE: clingo 5.8 raised MemoryError in every test; this branch covers a failed
            # allocation that reaches Python as RuntimeError("std::bad_alloc") instead.
            if "bad_alloc" in str(error):
                reply = ("limit", "memory_mib", _memory_message(job))
                stop = True
            else:
                reply = ("error", f"clingo failed: {error}")
        except Exception as error:  # noqa: BLE001 - the parent turns this into one error line
            reply = ("error", f"{type(error).__name__}: {error}")

        try:
            connection.send(reply)
        except pipe_closed:
            return
        if stop:
            return
