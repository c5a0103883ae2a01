"""Worker pool and program checks: rejected statements, clingo messages, limits and recycling."""

from __future__ import annotations

import os
import signal
import threading
import time

import clingo
import pytest

from reasoning.engine import LIBRARY, Limits, ReasoningPool
from reasoning.errors import JobStopped, LimitExceeded, ProgramError, ReasoningError
from reasoning.program import check_program, describe_message

TEST_LIMITS = Limits(wall_seconds=2.0, memory_mib=128, program_bytes=4096, max_atoms=1000, jobs_per_worker=100)

# Pigeonhole: 12 pigeons in 11 holes is unsatisfiable, and clingo needs longer than the 2 s limit to prove it.
SLOW_SOLVE = "pigeon(1..12). hole(1..11). 1 { in(P, H) : hole(H) } 1 :- pigeon(P). :- in(P, H), in(Q, H), P < Q."
# Grounding this needs gigabytes, far above the 128 MiB test limit.
HUGE_GROUNDING = "p(X) :- X = 1..100000000."


def facts() -> list[clingo.Symbol]:
    red, blue = clingo.Function("red"), clingo.Function("blue")
    return [
        clingo.Function("image_size", [clingo.Number(75), clingo.Number(75)]),
        clingo.Function("object", [red]),
        clingo.Function("colour", [red, red]),
        clingo.Function("shape", [red, clingo.Function("square")]),
        clingo.Function("position", [red, clingo.Number(10), clingo.Number(20)]),
        clingo.Function("object", [blue]),
        clingo.Function("colour", [blue, blue]),
        clingo.Function("shape", [blue, clingo.Function("circle")]),
        clingo.Function("position", [blue, clingo.Number(50), clingo.Number(60)]),
    ]


@pytest.fixture(scope="module")
def pool():
    with ReasoningPool(TEST_LIMITS) as shared:
        yield shared


# --------------------------------------------------------------------------- answers


def test_query_over_library(pool):
    answer = pool.solve(facts(), "west(A) :- left_of(A, _).")

    assert answer.satisfiable is True
    assert answer.models == [["west(red)"]]
    assert answer.warnings == []


def test_show_option_selects_predicates(pool):
    answer = pool.solve(facts(), "west(A) :- left_of(A, _).", show=[("left_of", 2), ("shape", 2)])

    assert answer.models == [["left_of(red,blue)", "shape(blue,circle)", "shape(red,square)"]]


def test_program_show_statement_is_used(pool):
    answer = pool.solve(facts(), "west(A) :- left_of(A, _). #show pair(A, B) : left_of(A, B).")

    assert answer.models == [["pair(red,blue)"]]


def test_show_signature_hides_library(pool):
    answer = pool.solve(facts(), "west(A) :- left_of(A, _). #show west/1.")

    assert answer.models == [["west(red)"]]


def test_show_terms_only(pool):
    answer = pool.solve(facts(), "#show (A, B) : left_of(A, B).")

    assert answer.models == [["(red,blue)"]]


def test_several_answer_sets(pool):
    answer = pool.solve(facts(), "{ pick(O) } :- object(O).", models=0)

    assert sorted(answer.models) == [[], ["pick(blue)"], ["pick(blue)", "pick(red)"], ["pick(red)"]]
    assert answer.exhausted is True


def test_unsatisfiable_program(pool):
    answer = pool.solve(facts(), ":- object(red).")

    assert answer.satisfiable is False
    assert answer.models == []


def test_consequences(pool):
    answer = pool.solve(facts(), "1 { pick(red); pick(blue) } 1. sure :- object(red).", consequences=True)

    assert answer.certain == ["sure"]
    # Atoms are in clingo's symbol order: arity first, then name and arguments.
    assert answer.possible == ["sure", "pick(blue)", "pick(red)"]


def test_optimisation_reports_optimal_model(pool):
    answer = pool.solve(facts(), "{ pick(O) : object(O) }. :~ not pick(O), object(O). [1@1, O]", models=0)

    assert answer.models == [["pick(blue)", "pick(red)"]]


def test_without_library(pool):
    answer = pool.solve(facts(), "west(A) :- left_of(A, _).", library=[])

    assert answer.models == [[]]
    assert any("left_of" in warning for warning in answer.warnings)


def test_concurrent_callers_share_pool():
    results = []
    with ReasoningPool(TEST_LIMITS, workers=2) as shared:

        def call(number: int) -> None:
            results.append(shared.solve(facts(), f"n({number}).").models)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert sorted(results) == [[["n(0)"]], [["n(1)"]], [["n(2)"]], [["n(3)"]]]


# --------------------------------------------------------------------------- rejected programs


def test_script_rejected(pool):
    program = "a.\n#script (python)\nimport os\n#end.\n"

    with pytest.raises(ProgramError, match=r"^line 2, column 1: #script is not allowed") as error:
        pool.solve(facts(), program)
    assert error.value.line == 2


@pytest.mark.parametrize(
    "program",
    ['#include "/etc/passwd".', "a.\n  #include <incmode>.", 'a. % #include "x.lp".', 'p("#include").'],
)
def test_include_rejected(pool, program):
    with pytest.raises(ProgramError, match="#include is not allowed"):
        pool.solve(facts(), program)


def test_include_never_opens_file(tmp_path):
    secret = tmp_path / "secret.lp"
    secret.write_text("secret.")

    with pytest.raises(ProgramError, match=r"line 1, column 1: #include"):
        check_program(f'#include "{secret}".', max_bytes=4096)


def test_external_function_rejected(pool):
    with pytest.raises(ProgramError, match=r"line 1, column 13: external function @f is not allowed"):
        pool.solve(facts(), "p(X) :- X = @f(1).")


def test_syntax_error_has_line_and_column(pool):
    with pytest.raises(ProgramError, match=r"^line 2, column 9: syntax error") as error:
        pool.solve(facts(), "a.\nb :- c(1.\n")
    assert (error.value.line, error.value.column) == (2, 9)


def test_unsafe_variable_names_rule(pool):
    with pytest.raises(ProgramError) as error:
        pool.solve(facts(), "ok.\nfar(X) :- object(red).")

    message = str(error.value)
    assert message.startswith("line 2, column 1: unsafe variables in")
    assert "far(X)" in message
    assert "'X' is unsafe" in message
    assert "#inc_base" not in message


def test_warning_is_not_fatal(pool):
    answer = pool.solve(facts(), "q(X) :- undefined_thing(X).\nr.")

    assert answer.models == [["r"]]
    assert any("line 1, column 9" in w and "undefined_thing(X)" in w for w in answer.warnings)


def test_ungrounded_part_warns(pool):
    answer = pool.solve(facts(), "a.\n#program later.\nb.")

    assert answer.models == [["a"]]
    assert any("#program later" in warning for warning in answer.warnings)


def test_describe_message_outside_program():
    text, line, column = describe_message("/lib/spatial.lp:3:1-9: info: atom does not occur in any rule head:\n  x(A)\n")

    assert text == "/lib/spatial.lp:3:1: atom does not occur in any rule head: x(A)"
    assert (line, column) == (None, None)


# --------------------------------------------------------------------------- limits


def test_program_size_limit(pool):
    program = "a." * 3000

    with pytest.raises(LimitExceeded, match=r"program is 6000 bytes, over the limit of 4096 bytes") as error:
        pool.solve(facts(), program)
    assert error.value.limit == "program_bytes"


def test_memory_limit_kills_worker_and_pool_recovers(pool):
    before = pool.worker_pids()

    with pytest.raises(LimitExceeded, match=r"memory limit of 128 MiB \(memory_mib\)") as error:
        pool.solve(facts(), HUGE_GROUNDING)

    assert error.value.limit == "memory_mib"
    assert pool.worker_pids() != before
    assert pool.solve(facts(), "after.").models == [["after"]]


def test_wall_clock_limit_kills_worker_and_pool_recovers(pool):
    before = pool.worker_pids()

    with pytest.raises(LimitExceeded, match=r"wall-clock limit of 2 s \(wall_seconds\)") as error:
        pool.solve(facts(), SLOW_SOLVE)

    assert error.value.limit == "wall_seconds"
    assert pool.worker_pids() != before
    assert pool.solve(facts(), "after.").models == [["after"]]


def test_per_call_limits(pool):
    with pytest.raises(LimitExceeded) as error:
        pool.solve(facts(), SLOW_SOLVE, limits=TEST_LIMITS.model_copy(update={"wall_seconds": 0.5}))

    assert error.value.limit == "wall_seconds"


def test_answer_size_limit(pool):
    with pytest.raises(LimitExceeded, match=r"2000 atoms, over the limit of 1000 \(max_atoms\)") as error:
        pool.solve(facts(), "p(1..2000).")

    assert error.value.limit == "max_atoms"


def test_workers_recycled_after_jobs():
    limits = TEST_LIMITS.model_copy(update={"jobs_per_worker": 2})
    with ReasoningPool(limits) as recycled:
        first = recycled.worker_pids()
        recycled.solve(facts(), "a.")
        assert recycled.worker_pids() == first
        recycled.solve(facts(), "a.")
        second = recycled.worker_pids()
        recycled.solve(facts(), "a.")

        assert second != first
        assert len(second) == 1
        assert recycled.worker_pids() == second


def test_closed_pool_rejects_jobs():
    closed = ReasoningPool(TEST_LIMITS)
    closed.close()

    with pytest.raises(Exception, match="reasoning pool is closed"):
        closed.solve(facts(), "a.")
    assert closed.worker_pids() == []


def test_library_loads_in_worker(pool):
    answer = pool.solve(facts(), "", show=[("distance2", 3)], library=LIBRARY)

    assert answer.models == [["distance2(blue,red,3200)", "distance2(red,blue,3200)"]]


# --------------------------------------------------------------------------- more programs and faults

# Grounding walks two billion values and keeps none of them: little memory, far longer than 2 s.
SLOW_GROUNDING = "q(X) :- X = 1..2000000000, X \\ 7 = 100."


def test_slow_grounding_stopped_by_wall_clock(pool):
    before = pool.worker_pids()

    with pytest.raises(LimitExceeded, match=r"wall-clock limit of 2 s \(wall_seconds\)") as error:
        pool.solve(facts(), SLOW_GROUNDING)

    assert error.value.limit == "wall_seconds"
    assert pool.worker_pids() != before
    assert pool.solve(facts(), "after.").models == [["after"]]


def test_lua_script_rejected(pool):
    with pytest.raises(ProgramError, match=r"^line 1, column 1: #script is not allowed"):
        pool.solve(facts(), "#script (lua)\nfunction f() return 1 end\n#end.\na.")


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("#external e. a.", [["a"]]),
        ("#const n = 3. size(n).", [["size(3)"]]),
        ("#defined q/1. a :- q(1).", [[]]),
        ("a. #heuristic a. [1, true]", [["a"]]),
        ("{ a }. #project a/0. b.", [["b"]]),
    ],
    ids=["external", "const", "defined", "heuristic", "project"],
)
def test_declarative_directives_allowed(pool, program, expected):
    answer = pool.solve(facts(), program, show=[("a", 0), ("b", 0), ("size", 1)])

    assert answer.models[:1] == expected


def busy_pool(limits: Limits = TEST_LIMITS):
    """Start a one-worker pool and a thread whose endless job occupies the worker until `stop` is set."""
    shared = ReasoningPool(limits.model_copy(update={"wall_seconds": 60.0}))
    stop = threading.Event()
    outcome: list[BaseException] = []

    def occupy() -> None:
        try:
            shared.solve(facts(), SLOW_SOLVE, cancelled=stop)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome.append(error)

    thread = threading.Thread(target=occupy)
    thread.start()
    for _ in range(200):
        if shared.busy_pids():
            break
        time.sleep(0.05)
    return shared, stop, thread, outcome


def test_wait_for_worker_respects_deadline():
    shared, stop, thread, outcome = busy_pool()
    try:
        with pytest.raises(JobStopped, match="waiting 0.3 s for a free reasoning worker") as error:
            shared.solve(facts(), "a.", deadline=time.monotonic() + 0.3)
        assert error.value.reason == "deadline"
    finally:
        stop.set()
        thread.join(30)
        shared.close()
    assert len(outcome) == 1


def test_cancel_kills_running_job():
    shared, stop, thread, outcome = busy_pool()
    try:
        busy = shared.busy_pids()
        stop.set()
        thread.join(30)

        assert busy != []
        assert isinstance(outcome[0], JobStopped)
        assert outcome[0].reason == "cancelled"
        assert busy[0] not in shared.worker_pids()
        assert shared.busy_pids() == []
        assert shared.solve(facts(), "after.").models == [["after"]]
    finally:
        shared.close()


def test_deadline_stops_running_job():
    with ReasoningPool(TEST_LIMITS.model_copy(update={"wall_seconds": 60.0})) as shared:
        before = shared.worker_pids()

        with pytest.raises(JobStopped, match="deadline passed after .* of grounding or solving") as error:
            shared.solve(facts(), SLOW_SOLVE, deadline=time.monotonic() + 0.5)

        assert error.value.reason == "deadline"
        assert shared.worker_pids() != before
        assert shared.solve(facts(), "after.").models == [["after"]]


def test_closed_pool_stops_waiting_caller():
    shared, stop, thread, outcome = busy_pool()
    waited: list[BaseException] = []

    def wait() -> None:
        try:
            shared.solve(facts(), "a.")
        except Exception as error:  # noqa: BLE001 - the test inspects it
            waited.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        shared.close()
        waiter.join(10)
        assert not waiter.is_alive()
        assert isinstance(waited[0], JobStopped)
        assert waited[0].reason == "closed"
    finally:
        stop.set()
        thread.join(30)


def test_killed_worker_fails_only_its_job():
    shared, stop, thread, outcome = busy_pool()
    try:
        pid = shared.busy_pids()[0]
        os.kill(pid, signal.SIGKILL)
        thread.join(30)

        assert len(outcome) == 1
        assert type(outcome[0]) is ReasoningError
        assert f"reasoning worker {pid} was killed by signal SIGKILL" in str(outcome[0])
        assert pid not in shared.worker_pids()
        assert shared.solve(facts(), "after.").models == [["after"]]
    finally:
        stop.set()
        thread.join(30)
        shared.close()


def test_worker_exits_when_parent_dies(capfd):
    import multiprocessing

    from reasoning.worker import serve

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    worker = context.Process(target=serve, args=(child,), daemon=True)
    worker.start()
    child.close()
    # Closing the parent's end with the ready message unread makes the kernel reset the
    # connection, which is what workers saw when their server was killed with SIGKILL.
    assert parent.poll(30)
    parent.close()
    worker.join(30)

    assert worker.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err


def test_deadline_stops_wait_for_starting_worker():
    # A spawned worker starts a fresh interpreter and imports clingo before it is ready,
    # which is expected to take well over the 20 ms deadline (an estimate).
    with ReasoningPool(TEST_LIMITS, start_method="spawn") as shared:
        with pytest.raises(JobStopped, match="for a reasoning worker to start") as error:
            shared.solve(facts(), "a.", deadline=time.monotonic() + 0.02)

        assert error.value.reason == "deadline"
        # The worker was kept, and the next job waits for it to finish starting.
        assert shared.solve(facts(), "after.").models == [["after"]]
