"""Helpers shared by the command-line tools."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import NoReturn

__all__ = ["EXIT_BROKEN_PIPE", "ArgumentParser", "silence_broken_stdout"]

# The status a shell reports for a process that SIGPIPE ended, as `seq 100000 | head -1` shows.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def silence_broken_stdout() -> int:
    """Point stdout at /dev/null after its reader has gone, and return `EXIT_BROKEN_PIPE`.

    A reader such as `head` may close the pipe before the output ends. Writes then raise
    BrokenPipeError, and so would the flush at interpreter exit; with stdout on /dev/null
    the process ends quietly, as Unix tools do.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser that reports a usage error as one stderr line that points to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see {self.prog} --help\n")
