"""Exceptions raised by the reasoning layer; each message is one line that names the value and the fix."""

from __future__ import annotations

__all__ = ["ReasoningError", "ProgramError", "LimitExceeded", "JobStopped", "FactsError"]


class ReasoningError(Exception):
    """Base class of every error the reasoning layer raises on purpose."""


class ProgramError(ReasoningError, ValueError):
    """An ASP program that is rejected or that clingo cannot ground.

    `line` and `column` are 1-based positions in the user's program text, or None when
    the error has no single position (a size limit, for example).
    """

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column


class LimitExceeded(ReasoningError):
    """A reasoning job that ran past a resource limit; `limit` is the `Limits` field name."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class JobStopped(ReasoningError):
    """A job that ended without an answer because its caller gave up or the pool closed.

    `reason` is "deadline" (the caller's deadline passed), "cancelled" (the caller's
    cancel event was set) or "closed" (the pool closed before a worker was free).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class FactsError(ReasoningError, ValueError):
    """An extraction that cannot be written as facts, such as an attribute named like a reserved predicate."""
