"""Shared by the bench scripts: argument parsing and printing the command that reproduces."""

from __future__ import annotations

import shlex
import sys


def reproduce_line() -> str:
    return "reproduce: " + shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"
