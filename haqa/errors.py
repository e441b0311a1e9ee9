"""The one exception type for errors a user can cause.

Every message is a single line that names what to fix; the CLI turns a ``HaqaError`` into
exit code 2 in one place (``haqa.cli.main``), so no command prints a traceback for bad input.
"""

from __future__ import annotations


class HaqaError(Exception):
    """A user-fixable problem: bad input, a missing file, an impossible goal."""

    def __init__(self, message: str) -> None:
        # One line, always: multi-line text from a library is folded so the CLI's contract holds.
        from haqa.redact import redact

        super().__init__(redact(" ".join(message.split())))

    @property
    def message(self) -> str:
        return str(self)
