"""Solve user ASP programs over image facts in worker processes with time and memory limits.

Grounding cannot be interrupted inside a process, so every job runs in a separate
worker process. A worker that exceeds the wall-clock or memory limit is killed and
replaced, and workers are replaced after `jobs_per_worker` jobs because clingo's symbol
table only grows. `ReasoningPool` is thread-safe: concurrent callers share its workers.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import clingo
from pydantic import BaseModel, ConfigDict, Field

from .errors import JobStopped, LimitExceeded, ProgramError, ReasoningError
from .facts import render_facts
from .program import check_program
from .solver import Job, Outcome
from .worker import serve

__all__ = [
    "RULES_DIR",
    "LIBRARY",
    "ALTERNATIVES_RULES",
    "Limits",
    "Answer",
    "ReasoningPool",
    "default_pool",
    "solve",
]

log = logging.getLogger(__name__)

RULES_DIR = Path(__file__).resolve().parent / "rules"
# Rule files loaded with every user program unless the caller passes another library.
LIBRARY: tuple[Path, ...] = (RULES_DIR / "spatial.lp", RULES_DIR / "attributes.lp")
# Choice rules over candidate values, loaded when facts carry alternatives.
ALTERNATIVES_RULES = RULES_DIR / "alternatives.lp"

# Time a new worker may take to import clingo and report ready; not part of any job's limit.
STARTUP_SECONDS = 60.0
# How often a caller waiting for a worker or a reply checks its deadline and cancel event.
POLL_SECONDS = 0.05


class Limits(BaseModel):
    """Resource limits for one reasoning job, plus the worker recycling period."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_seconds: float = Field(10.0, gt=0, description="wall-clock time for grounding and solving one job")
    memory_mib: int = Field(
        1024, ge=16, description="address space a job may add to its worker's own, in MiB (RLIMIT_AS)"
    )
    program_bytes: int = Field(65_536, ge=1, description="size of the user program in UTF-8 bytes")
    max_models: int = Field(100, ge=1, description="answer sets returned per job")
    max_atoms: int = Field(10_000, ge=1, description="atoms returned per answer set or consequence")
    jobs_per_worker: int = Field(200, ge=1, description="jobs a worker runs before it is replaced")


class Answer(BaseModel):
    """The result of one job. Atoms are in clingo syntax, sorted by clingo's symbol order."""

    satisfiable: bool | None
    models: list[list[str]] = Field(default_factory=list, description="answer sets found, up to the requested number")
    certain: list[str] | None = Field(None, description="cautious consequences: true in every answer set")
    possible: list[str] | None = Field(None, description="brave consequences: true in some answer set")
    exhausted: bool = Field(False, description="the search finished, so no answer set is missing from `models`")
    warnings: list[str] = Field(default_factory=list)
    seconds: float = Field(0.0, description="wall-clock time of the job, worker round trip included")


# gRPC cancels a call when its deadline passes, which can happen a little before the
# deadline the server computed from the call's remaining time. A cancellation within this
# margin of the deadline counts as the deadline passing.
DEADLINE_MARGIN_SECONDS = 0.25


def _deadline_near(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline - DEADLINE_MARGIN_SECONDS


def _stop_reason(deadline: float | None, cancelled: threading.Event | None) -> str | None:
    """Return why a job that waits for a worker must stop: "cancelled", "deadline" or None.

    A cancellation within the margin of the deadline counts as the deadline.
    """
    if cancelled is not None and cancelled.is_set():
        return "deadline" if _deadline_near(deadline) else "cancelled"
    if deadline is not None and time.monotonic() >= deadline:
        return "deadline"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, context: multiprocessing.context.BaseContext) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child,), name="reasoning-worker", daemon=True)
        self.process.start()
        child.close()
        self.jobs = 0
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def wait_ready(self, deadline: float | None = None, cancelled: threading.Event | None = None) -> None:
        """Wait for the worker's ready message; raise JobStopped when the deadline passes or `cancelled` is set first."""
        if self.ready:
            return
        started = time.monotonic()
        while not self.connection.poll(POLL_SECONDS):
            waited = time.monotonic() - started
            if waited >= STARTUP_SECONDS:
                raise ReasoningError(f"reasoning worker did not start within {STARTUP_SECONDS:.0f} s")
            reason = _stop_reason(deadline, cancelled)
            if reason == "cancelled":
                raise JobStopped("job cancelled while its reasoning worker was starting", reason=reason)
            if reason == "deadline":
                raise JobStopped(
                    f"deadline passed after waiting {waited:.1f} s for a reasoning worker to start", reason=reason
                )
        try:
            self.connection.recv()
        except EOFError:
            raise ReasoningError(
                f"reasoning worker exited during start-up with exit code {self.process.exitcode}"
            ) from None
        self.ready = True

    def stop(self) -> None:
        """Ask the worker to exit, and kill it if it does not within a second."""
        try:
            self.connection.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(1.0)
        if self.process.is_alive():
            self.kill()
        self.connection.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


class ReasoningPool:
    """Worker processes that solve user programs under `Limits`.

    Parameters
    ----------
    limits
        Default limits of each job; `solve` may pass others per call, except that
        `jobs_per_worker` always comes from the pool's limits.
    workers
        Number of worker processes, and so of jobs that run at the same time. Further
        callers wait for a free worker.
    start_method
        multiprocessing start method, "forkserver" (default where available) or "spawn".
    """

    def __init__(self, limits: Limits | None = None, *, workers: int = 1, start_method: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"invalid workers {workers}: at least 1 is needed")
        if start_method is None:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"invalid start_method {start_method!r}: use 'forkserver' or 'spawn'")
        self.limits = limits or Limits()
        self.workers = workers
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Workers fork from a server process that has imported clingo once, which starts
            # a replacement faster than a fresh interpreter. As with any spawn or forkserver
            # child, the caller's main module is imported too and needs a __main__ guard.
            self._context.set_forkserver_preload(["__main__", "reasoning.worker"])
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: set[_Worker] = set()
        self._busy: set[_Worker] = set()  # workers running a job
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(workers):
            self._idle.put(self._start_worker())

    def __enter__(self) -> ReasoningPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_worker(self) -> _Worker:
        worker = _Worker(self._context)
        with self._lock:
            self._workers.add(worker)
        return worker

    def _retire(self, worker: _Worker, *, kill: bool) -> None:
        with self._lock:
            self._workers.discard(worker)
        if kill:
            worker.kill()
        else:
            worker.stop()

    def _release(self, worker: _Worker, *, replace: bool, kill: bool = False) -> None:
        """Return a worker to the idle queue, or retire it and queue a fresh one."""
        with self._lock:
            self._busy.discard(worker)
        if replace or self._closed:
            self._retire(worker, kill=kill)
            if not self._closed:
                self._idle.put(self._start_worker())
        else:
            self._idle.put(worker)

    def worker_pids(self) -> list[int]:
        """Return the process ids of the current workers."""
        with self._lock:
            return sorted(w.pid for w in self._workers if w.pid is not None)

    def busy_pids(self) -> list[int]:
        """Return the process ids of the workers that are running a job now."""
        with self._lock:
            return sorted(w.pid for w in self._busy if w.pid is not None)

    def _acquire(self, deadline: float | None, cancelled: threading.Event | None) -> _Worker:
        """Take an idle worker; raise JobStopped when the deadline passes, `cancelled` is set or the pool closes."""
        started = time.monotonic()
        while True:
            if self._closed:
                raise JobStopped("reasoning pool is closed", reason="closed")
            reason = _stop_reason(deadline, cancelled)
            if reason == "cancelled":
                raise JobStopped("job cancelled while waiting for a free reasoning worker", reason=reason)
            if reason == "deadline":
                raise JobStopped(
                    f"deadline passed after waiting {time.monotonic() - started:.1f} s for a free reasoning"
                    f" worker; all {self.workers} workers were busy",
                    reason=reason,
                )
            wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))
            try:
                worker = self._idle.get(timeout=wait)
            except queue.Empty:
                continue
            if self._closed:
                self._retire(worker, kill=False)
                raise JobStopped("reasoning pool is closed", reason="closed")
            return worker

    def _await_reply(
        self, worker: _Worker, until: float, cancelled: threading.Event | None, deadline: float | None = None
    ) -> tuple | None:
        """Return the worker's reply, or None when `until` passes first; raise JobStopped once `cancelled` is set.

        A cancellation within the margin of `deadline` also returns None, as the deadline passing.
        """
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            if worker.connection.poll(min(remaining, POLL_SECONDS)):
                return worker.connection.recv()
            if cancelled is not None and cancelled.is_set() and _deadline_near(deadline):
                return None
            if cancelled is not None and cancelled.is_set():
                log.info("reasoning job on worker %s cancelled by its caller; killing the worker", worker.pid)
                self._release(worker, replace=True, kill=True)
                raise JobStopped("job cancelled while grounding or solving; the worker was replaced", reason="cancelled")

    def close(self) -> None:
        """Stop every worker; jobs still running finish first and their workers stop after."""
        self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            self._retire(worker, kill=False)

    def solve(
        self,
        facts: Sequence[clingo.Symbol],
        program: str = "",
        show: Sequence[tuple[str, int]] | None = None,
        *,
        library: Sequence[str | Path] = LIBRARY,
        models: int = 1,
        consequences: bool = False,
        limits: Limits | None = None,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> Answer:
        """Solve `program` with the rule `library` over `facts` in a worker process.

        `show` lists the name/arity of the atoms to report. Without it, a program with its own
        #show statements reports what clingo shows, and any other program reports the atoms
        of the predicates its rule heads define. `models` is the number of answer sets to
        report (0 for up to `max_models`). With `consequences`, the answer holds the cautious
        (`certain`) and brave (`possible`) consequences instead.

        `deadline` (a `time.monotonic()` value) bounds the wait for a free worker and the
        job itself, on top of `limits.wall_seconds`. Setting `cancelled` stops the wait,
        or kills the worker that runs the job and starts a replacement.

        Raises ProgramError for a rejected or ungroundable program, LimitExceeded when a
        limit is reached (the error names the `Limits` field), JobStopped when the deadline
        passes, `cancelled` is set or the pool closes first, and ReasoningError when a
        worker fails in another way.
        """
        limits = limits or self.limits
        if self._closed:
            raise JobStopped("reasoning pool is closed", reason="closed")
        # Checking here returns syntax and safety errors without a worker round trip;
        # the worker checks the same text again before it runs it.
        check_program(program, max_bytes=limits.program_bytes)
        job = Job(
            facts=render_facts(facts),
            program=program,
            library=tuple(str(path) for path in library),
            show=None if show is None else tuple((str(name), int(arity)) for name, arity in show),
            models=models,
            consequences=consequences,
            max_models=limits.max_models,
            max_atoms=limits.max_atoms,
            program_bytes=limits.program_bytes,
            memory_bytes=limits.memory_mib * 2**20,
        )

        worker = self._acquire(deadline, cancelled)
        try:
            worker.wait_ready(deadline, cancelled)
        except JobStopped:
            # The worker is still starting, so it stays in the pool for the next job.
            self._release(worker, replace=False)
            raise
        except ReasoningError:
            self._release(worker, replace=True, kill=True)
            raise

        with self._lock:
            self._busy.add(worker)
        started = time.perf_counter()
        until = time.monotonic() + limits.wall_seconds
        deadline_first = deadline is not None and deadline < until
        if deadline_first:
            until = deadline
        try:
            worker.connection.send(job)
            reply = self._await_reply(worker, until, cancelled, deadline)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            pid = worker.pid
            worker.process.join(1.0)
            code = worker.process.exitcode
            if code is not None and code < 0:
                ending = f"was killed by signal {_signal_name(-code)}"
            else:
                ending = f"exited with code {code}"
            log.error("reasoning worker %s %s during a job; starting a replacement", pid, ending)
            self._release(worker, replace=True, kill=True)
            raise ReasoningError(
                f"reasoning worker {pid} {ending} during the job and was replaced; a job over the memory"
                f" limit of {limits.memory_mib} MiB (memory_mib) can end a worker this way"
            ) from None
        seconds = time.perf_counter() - started

        if reply is None and deadline_first:
            log.info("reasoning job on worker %s passed its caller's deadline; killing the worker", worker.pid)
            self._release(worker, replace=True, kill=True)
            raise JobStopped(
                f"deadline passed after {seconds:.1f} s of grounding or solving; the worker was replaced",
                reason="deadline",
            )
        if reply is None:
            log.warning(
                "reasoning worker %s exceeded the wall-clock limit of %s s; killing it", worker.pid, limits.wall_seconds
            )
            self._release(worker, replace=True, kill=True)
            raise LimitExceeded(
                f"wall-clock limit of {limits.wall_seconds:g} s (wall_seconds) exceeded while grounding or solving;"
                " the worker was replaced. Simplify the program or raise the limit",
                limit="wall_seconds",
            )

        worker.jobs += 1
        memory_breach = reply[0] == "limit" and reply[1] == "memory_mib"
        self._release(worker, replace=memory_breach or worker.jobs >= self.limits.jobs_per_worker)
        return self._answer(reply, seconds)

    @staticmethod
    def _answer(reply: tuple, seconds: float) -> Answer:
        kind = reply[0]
        if kind == "ok":
            outcome: Outcome = reply[1]
            return Answer(
                satisfiable=outcome.satisfiable,
                models=outcome.models,
                certain=outcome.certain,
                possible=outcome.possible,
                exhausted=outcome.exhausted,
                warnings=outcome.warnings,
                seconds=seconds,
            )
        if kind == "program":
            raise ProgramError(reply[1], line=reply[2], column=reply[3])
        if kind == "limit":
            raise LimitExceeded(reply[2], limit=reply[1])
        raise ReasoningError(reply[1])


_default_pool: ReasoningPool | None = None
_default_lock = threading.Lock()


def default_pool() -> ReasoningPool:
    """Return the process-wide pool with default limits, starting it on first use."""
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = ReasoningPool()
            atexit.register(_default_pool.close)
        return _default_pool


def solve(
    facts: Sequence[clingo.Symbol],
    program: str = "",
    show: Sequence[tuple[str, int]] | None = None,
    *,
    limits: Limits | None = None,
    **options,
) -> Answer:
    """Solve with the process-wide pool; see `ReasoningPool.solve` for the arguments."""
    return default_pool().solve(facts, program, show, limits=limits, **options)
