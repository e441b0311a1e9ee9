"""The one exception type for errors a user can cause.

Every message is a single line that names what to fix; the CLI turns a ``HaqaError`` into
exit code 2 in one place (``haqa.cli.main``), so no command prints a traceback for bad input.
"""

from __future__ import annotations

import errno
import os
import re

#: Exit codes a pipeline can act on (README, ``haqa run --help``): 0 an answer that meets the goal.
EXIT_BAD_INPUT = 2
EXIT_GOAL_NOT_MET = 3
EXIT_STOPPED = 4
EXIT_REGRESSION = 5


class HaqaError(Exception):
    """A user-fixable problem: bad input, a missing file, an impossible goal."""

    #: What the CLI exits with: bad input unless a subclass says otherwise.
    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        # One line, always: multi-line text from a library is folded so the CLI's contract holds.
        from haqa.redact import redact

        super().__init__(redact(" ".join(message.split())))

    @property
    def message(self) -> str:
        return str(self)


class GoalNotMet(HaqaError):
    """The run finished and no configuration met the goal: the model or the goal changed, not
    the command."""

    exit_code = EXIT_GOAL_NOT_MET


class RunStopped(HaqaError):
    """The run stopped before the end (the user's stop, a signal): resumable with --resume."""

    exit_code = EXIT_STOPPED


class RegressionFailed(HaqaError):
    """The answer is worse than the baseline run by more than the allowed regression."""

    exit_code = EXIT_REGRESSION


#: errno values that mean "no room to write": disk full, quota, a file-size limit (ulimit -f).
_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: How libraries that wrap the OS error (DuckDB, the C++ side of llama.cpp) word the same thing.
_NO_ROOM_TEXT = ("no space left on device", "disk quota exceeded", "file too large")
#: numpy's ``tofile`` (the GGUF writer) reports a short write without its errno.
_SHORT_WRITE = re.compile(r"\b\d+ requested and \d+ written\b")


def no_room_message(exc: BaseException) -> str | None:
    """A one-line message for an error that means the disk (or a size limit) is full, naming
    what to do; ``None`` for any other error. Looks through ``__cause__``/``__context__``
    because a library may re-raise the OS error as its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        number = getattr(current, "errno", None)
        text = " ".join(str(current).split())
        if (
            number in _NO_ROOM_ERRNOS
            or any(t in text.lower() for t in _NO_ROOM_TEXT)
            or _SHORT_WRITE.search(text)
        ):
            where = getattr(current, "filename", None)
            reason = os.strerror(number) if number in _NO_ROOM_ERRNOS else text[:200]
            target = f" writing {where}" if where else ""
            return (
                f"no room to write{target} ({reason}): free disk space (or raise the file-size "
                "limit, or point HAQA_HOME/--db at a larger disk) and run the command again; "
                "everything recorded before this is kept"
            )
        current = current.__cause__ or current.__context__
    return None


def failure_reason(exc: BaseException, limit: int = 1000) -> str:
    """Why a tool failed, as a trial records it: one line, the no-room message where it applies,
    else the exception's type and its (folded, cut) message."""
    return no_room_message(exc) or f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"
