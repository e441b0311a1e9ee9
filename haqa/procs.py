"""Child processes that die with their parent: a trial's measurements never outlive the run.

Every process haqa starts to do a trial's work (the trial worker, the llama.cpp benchmark, the
memory and kernel measurements) calls :func:`die_with_parent` as its first action. Why each part:

* ``PR_SET_PDEATHSIG(SIGKILL)`` (Linux): the kernel kills the child when its parent dies, however
  it dies (``kill -9`` included), at once. It is not inherited across ``fork``, so a grandchild
  that does not ask for it itself survives its parent's death: each child must ask.
* The parent's pid, passed in the environment by :func:`child_env`, checked with
  ``os.getppid()`` *after* the ``prctl``: a parent that died before the child got that far (the
  child was still importing) left it orphaned with no signal to come; the check catches that.
* Where there is no ``prctl`` (macOS, or a libc without it), a daemon watchdog thread that polls
  ``os.getppid()``: the same guarantee within a fraction of a second. Not started where the
  kernel's signal is armed: a thread waking during a benchmark is noise for nothing.

The variable is removed from the environment once read, so a grandchild started without
:func:`child_env` does not mistake its grandparent for its parent.

When the check or the watchdog finds the parent gone and the child leads its own process group
(the trial worker does, so that its parent can kill the whole trial), it kills that group: its
own children go with it. The kernel's signal kills the child alone, which is why each child that
measures arms its own.

Start such children from a thread that waits for them (``subprocess.run``, or ``Popen`` then
``wait`` in the same thread): the kernel's signal follows the *thread* that forked, so it would
fire, too early, when that thread ended while its parent process lived on.

Standard library only: it runs before anything heavy is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Mapping

#: The environment variable that carries the parent's pid to the child.
PARENT_PID_ENV = "HAQA_PARENT_PID"
#: How often the watchdog looks at the parent.
WATCH_INTERVAL_S = 0.2
#: The first line of a ``python -c`` child script that measures (see :func:`die_with_parent`).
CHILD_PRELUDE = "import haqa.procs as _haqa_procs; _haqa_procs.die_with_parent()\n"

_PR_SET_PDEATHSIG = 1


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that calls :func:`die_with_parent`: ``env`` (default: this
    process's) plus this process's pid, which the child checks its parent against."""
    out = dict(os.environ if env is None else env)
    out[PARENT_PID_ENV] = str(os.getpid())
    return out


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only); whether
    it could. Not inherited by children: each child asks for itself."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(int(sig)), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _die() -> None:
    """Go now, with this process's own children when it leads their process group."""
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _expected_parent() -> int | None:
    value = os.environ.pop(PARENT_PID_ENV, None)
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _watch(parent: int, interval_s: float) -> None:
    event = threading.Event()
    while not event.wait(interval_s):
        if os.getppid() != parent:
            _die()


def die_with_parent(*, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Make this process die with its parent: the death signal (or, without one, the watchdog
    thread) and the check that closes the race before it. Call it first in a child's
    ``__main__``."""
    expected = _expected_parent()
    armed = set_parent_death_signal()
    parent = os.getppid()
    if expected is not None and parent != expected:
        _die()  # the parent died before the death signal was armed
    if armed or parent <= 1:
        return  # the kernel watches; or started by init, or orphaned with no parent named
    threading.Thread(
        target=_watch, args=(parent, interval_s), name="haqa-parent-watchdog", daemon=True
    ).start()


def python_module_command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` for a module that does not call :func:`die_with_parent` itself
    (a third-party script such as ``convert_hf_to_gguf``): the child arms it, then runs the
    module as ``__main__`` with the same ``sys.argv[1:]``. Run it with :func:`child_env`."""
    code = CHILD_PRELUDE + (
        f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code, *args]
