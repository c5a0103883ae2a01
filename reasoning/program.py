"""Check user ASP programs before clingo runs them, and turn clingo messages into one-line errors.

A user program may not read files or run code. `#include` is rejected before parsing,
because clingo's parser (5.8) opens included files itself and leaves no trace of them in
the AST. `#script` and external function calls (`@f(X)`) are rejected after parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import clingo
import clingo.ast as ast

from .errors import LimitExceeded, ProgramError

__all__ = ["CheckedProgram", "MessageLog", "check_program", "describe_message"]

# The source name clingo gives text parsed with clingo.ast.parse_string.
USER_SOURCE = "<string>"

# "<string>:3:12-14: error: ..." or "/path/rules.lp:3:1-4:2: info: ..."
_LOCATION = re.compile(
    r"^(?P<source>.*?):(?P<line>\d+):(?P<column>\d+)(?:-(?:\d+:)?\d+)?: "
    r"(?P<level>error|warning|info|note): (?P<text>.*)$"
)

# clingo 5.8 keeps comments as statements; older versions have no such node type.
_COMMENT = getattr(ast.ASTType, "Comment", None)

# Clingo prints rules of the base part with this internal guard literal.
_INTERNAL_GUARD = re.compile(r"\[#inc_base\];?|#inc_base;?")


@dataclass
class CheckedProgram:
    """A user program that passed the checks, as parsed statements plus what they define."""

    statements: list[ast.AST]
    has_show: bool  # the program has a #show statement for a signature (or a bare #show.)
    has_show_terms: bool  # the program has #show statements for terms, such as #show X : p(X).
    has_optimize: bool  # the program has #minimize, #maximize or weak constraints
    defined: set[tuple[str, int]] = field(default_factory=set)  # name/arity of atoms in rule heads
    warnings: list[str] = field(default_factory=list)


def describe_message(message: str) -> tuple[str, int | None, int | None]:
    """Flatten a clingo message into one line and return it with its line and column.

    Positions in the user's program read "line L, column C", and positions in other
    sources (library files, facts) keep the source name. Follow-up lines, such as the rule
    text of an unsafe-variable error and the notes that name each variable, are appended.
    """
    lines = [line for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "clingo reported an empty message", None, None
    first = _LOCATION.match(lines[0])
    if first is None:
        return " ".join(line.strip() for line in lines), None, None

    text = first["text"]
    code: list[str] = []
    notes: list[str] = []
    for extra in lines[1:]:
        located = _LOCATION.match(extra)
        if located is not None:
            notes.append(located["text"])
        else:
            code.append(_INTERNAL_GUARD.sub("", extra.strip()))
    if code:
        text = text.rstrip(":") + ": " + " ".join(code)
    if notes:
        text += " (" + "; ".join(notes) + ")"

    line, column = int(first["line"]), int(first["column"])
    if first["source"] == USER_SOURCE:
        return f"line {line}, column {column}: {text}", line, column
    return f"{first['source']}:{line}:{column}: {text}", None, None


class MessageLog:
    """A `logger=` callback for clingo that keeps errors and warnings apart.

    At most `max_warnings` warnings are kept, so a program that makes clingo warn about
    every ground rule cannot flood the answer; `dropped` counts the rest.
    """

    def __init__(self, max_warnings: int = 20) -> None:
        self.errors: list[tuple[str, int | None, int | None]] = []
        self.warnings: list[str] = []
        self.max_warnings = max_warnings
        self.dropped = 0

    def __call__(self, code: clingo.MessageCode, message: str) -> None:
        described = describe_message(message)
        if code == clingo.MessageCode.RuntimeError:
            self.errors.append(described)
        elif len(self.warnings) < self.max_warnings:
            self.warnings.append(described[0])
        else:
            self.dropped += 1

    def all_warnings(self) -> list[str]:
        if self.dropped:
            return [*self.warnings, f"{self.dropped} more warnings not shown"]
        return list(self.warnings)

    def program_error(self, fallback: str) -> ProgramError:
        """Return the first recorded error as a ProgramError, or `fallback` when none was recorded."""
        if not self.errors:
            return ProgramError(fallback)
        text, line, column = self.errors[0]
        if len(self.errors) > 1:
            text += f" (and {len(self.errors) - 1} more errors)"
        return ProgramError(text, line=line, column=column)


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _walk(node: ast.AST):
    yield node
    for key in node.child_keys:
        child = getattr(node, key)
        if child is None:
            continue
        if isinstance(child, ast.AST):
            yield from _walk(child)
        else:
            for item in child:
                yield from _walk(item)


def _signature(atom: ast.AST) -> tuple[str, int] | None:
    """Return name/arity of a symbolic atom, or None for other atoms (comparisons, theory atoms)."""
    if atom.ast_type != ast.ASTType.SymbolicAtom:
        return None
    term = atom.symbol
    if term.ast_type == ast.ASTType.UnaryOperation:  # classical negation, -p(X)
        term = term.argument
    if term.ast_type == ast.ASTType.Function:
        return term.name, len(term.arguments)
    if term.ast_type == ast.ASTType.SymbolicTerm and term.symbol.type == clingo.SymbolType.Function:
        return term.symbol.name, len(term.symbol.arguments)
    return None


def _head_signatures(head: ast.AST) -> set[tuple[str, int]]:
    """Return name/arity of the atoms a rule head can derive, leaving out element conditions."""
    kind = head.ast_type
    if kind == ast.ASTType.Literal:
        literals = [head]
    elif kind in (ast.ASTType.Aggregate, ast.ASTType.Disjunction):
        literals = [element.literal for element in head.elements]
    elif kind == ast.ASTType.HeadAggregate:
        literals = [element.condition.literal for element in head.elements]
    else:
        literals = []
    signatures = set()
    for literal in literals:
        signature = _signature(literal.atom)
        if signature is not None:
            signatures.add(signature)
    return signatures


def check_program(text: str, *, max_bytes: int) -> CheckedProgram:
    """Parse a user program and reject what could read files, run code or exceed `max_bytes`.

    Raises LimitExceeded (limit `program_bytes`) for an oversized program, and ProgramError
    with the line and column for a forbidden statement or a syntax error.
    """
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise LimitExceeded(
            f"program is {size} bytes, over the limit of {max_bytes} bytes (program_bytes); shorten it",
            limit="program_bytes",
        )
    if "\0" in text:
        line, column = _position(text, text.index("\0"))
        raise ProgramError(f"line {line}, column {column}: program contains a NUL character", line=line, column=column)

    # The literal is rejected anywhere, even in comments and strings, because only a
    # full clingo lexer could tell those apart and clingo would read the file first.
    include = text.find("#include")
    if include >= 0:
        line, column = _position(text, include)
        raise ProgramError(
            f"line {line}, column {column}: #include is not allowed because programs may not read files"
            " (the text '#include' is rejected in comments and strings too)",
            line=line,
            column=column,
        )

    statements: list[ast.AST] = []
    log = MessageLog()
    try:
        ast.parse_string(text, statements.append, logger=log, message_limit=5)
    except RuntimeError:
        raise log.program_error("syntax error") from None

    checked = CheckedProgram(
        statements=statements, has_show=False, has_show_terms=False, has_optimize=False, warnings=log.all_warnings()
    )
    part = "base"
    ignored_parts: set[str] = set()
    for statement in statements:
        kind = statement.ast_type
        line = statement.location.begin.line
        column = statement.location.begin.column
        if kind == ast.ASTType.Script:
            raise ProgramError(
                f"line {line}, column {column}: #script is not allowed because programs may not run code",
                line=line,
                column=column,
            )
        for node in _walk(statement):
            if node.ast_type == ast.ASTType.Function and node.external:
                where = node.location.begin
                raise ProgramError(
                    f"line {where.line}, column {where.column}: external function @{node.name} is not allowed"
                    " because programs may not call Python",
                    line=where.line,
                    column=where.column,
                )
        if kind == ast.ASTType.Program:
            part = statement.name
        elif part != "base" and kind != _COMMENT and part not in ignored_parts:
            ignored_parts.add(part)
            checked.warnings.append(
                f"line {line}, column {column}: statements in '#program {part}' are ignored; only the base part is grounded"
            )
        if kind == ast.ASTType.ShowSignature:
            checked.has_show = True
        elif kind == ast.ASTType.ShowTerm:
            checked.has_show_terms = True
        elif kind == ast.ASTType.Minimize:
            checked.has_optimize = True
        elif kind == ast.ASTType.Rule:
            checked.defined |= _head_signatures(statement.head)
    return checked
