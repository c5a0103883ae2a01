"""Ground and solve one reasoning job with clingo in the current process.

Reasoning workers call `run_job` for user programs. It imports only clingo and the
standard library, so that a worker process starts quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import clingo
import clingo.ast as ast

from .errors import LimitExceeded
from .program import CheckedProgram, MessageLog, check_program

__all__ = ["Job", "Outcome", "run_job"]


@dataclass(frozen=True)
class Job:
    """One request to a worker: facts, a user program and what to report."""

    facts: str  # ASP text printed by clingo from fact symbols
    program: str  # the user's program, checked again in the worker before it runs
    library: tuple[str, ...] = ()  # paths of trusted rule files loaded before the program
    show: tuple[tuple[str, int], ...] | None = None  # name/arity to report; None: see `_selector`
    models: int = 1  # number of answer sets to report; 0 for as many as max_models allows
    consequences: bool = False  # report cautious and brave consequences instead of answer sets
    max_models: int = 100
    max_atoms: int = 10_000
    program_bytes: int = 65_536
    memory_bytes: int = 1024 * 2**20  # address space the job may add to the worker's own


@dataclass
class Outcome:
    """Result of one job. Atoms are clingo's text for each symbol, sorted by clingo's symbol order."""

    models: list[list[str]] = field(default_factory=list)
    certain: list[str] | None = None  # cautious consequences, in consequences mode
    possible: list[str] | None = None  # brave consequences, in consequences mode
    satisfiable: bool | None = None
    exhausted: bool = False  # the search finished, so no further answer set exists
    warnings: list[str] = field(default_factory=list)


def _selector(job: Job, checked: CheckedProgram) -> Callable[[clingo.Model], list[clingo.Symbol]]:
    """Pick the atoms to report from a model.

    Explicit `show` signatures win. Otherwise a program with a #show statement for a
    signature gets what clingo shows. A program with only `#show TERM : BODY.` statements
    gets just those terms, although clingo would show all atoms as well. Any other program
    gets the atoms of the predicates its rule heads define.
    """
    if job.show is not None:
        wanted = set(job.show)
        return lambda model: [s for s in model.symbols(atoms=True) if (s.name, len(s.arguments)) in wanted]
    if checked.has_show:
        return lambda model: model.symbols(shown=True)
    if checked.has_show_terms:
        return lambda model: model.symbols(terms=True)
    defined = checked.defined
    return lambda model: [s for s in model.symbols(atoms=True) if (s.name, len(s.arguments)) in defined]


def _atoms(symbols: list[clingo.Symbol], max_atoms: int) -> list[str]:
    if len(symbols) > max_atoms:
        raise LimitExceeded(
            f"an answer has {len(symbols)} atoms, over the limit of {max_atoms} (max_atoms);"
            " narrow the answer with --show or #show",
            limit="max_atoms",
        )
    return [str(symbol) for symbol in sorted(symbols)]


def _consequence(control: clingo.Control, mode: str, select, max_atoms: int) -> tuple[list[str] | None, bool | None]:
    control.configuration.solve.enum_mode = mode
    last: list[str] | None = None
    with control.solve(yield_=True) as handle:
        for model in handle:
            last = _atoms(select(model), max_atoms)
        result = handle.get()
    return last, result.satisfiable


def run_job(job: Job) -> Outcome:
    """Check, ground and solve a job; raise ProgramError or LimitExceeded on failure."""
    checked = check_program(job.program, max_bytes=job.program_bytes)
    log = MessageLog()
    control = clingo.Control(logger=log, message_limit=100)

    # Library files are trusted, so clingo reads them directly.
    try:
        for path in job.library:
            control.load(path)
        with ast.ProgramBuilder(control) as builder:
            for statement in checked.statements:
                builder.add(statement)
        control.add("base", [], job.facts)
        control.ground([("base", [])])
    except RuntimeError:
        raise log.program_error("grounding failed") from None

    outcome = Outcome()
    select = _selector(job, checked)
    if job.consequences:
        outcome.certain, outcome.satisfiable = _consequence(control, "cautious", select, job.max_atoms)
        if outcome.satisfiable:
            outcome.possible, _ = _consequence(control, "brave", select, job.max_atoms)
        outcome.exhausted = True
    else:
        requested = min(job.models or job.max_models, job.max_models)
        control.configuration.solve.models = 0
        if checked.has_optimize:
            control.configuration.solve.opt_mode = "optN"
        stopped = False
        with control.solve(yield_=True) as handle:
            for model in handle:
                if checked.has_optimize and not model.optimality_proven:
                    continue
                outcome.models.append(_atoms(select(model), job.max_atoms))
                if len(outcome.models) >= requested:
                    stopped = True
                    handle.cancel()
                    break
            result = handle.get()
        outcome.satisfiable = result.satisfiable
        outcome.exhausted = bool(result.exhausted) and not stopped

    outcome.warnings = checked.warnings + log.all_warnings()
    return outcome
