"""The live trial processes of a store, so that no run measures beside a stray one.

A trial's processes die with their run (``haqa.procs``), but that rests on the kernel and on each
child asking for it; a process that missed it (an older haqa, a tool that spawns children of its
own) would keep using the cores while a resumed run benchmarks beside it, and every tokens/s it
recorded would be wrong. So the run that starts a trial writes one file for it here, and removes
it when the trial's processes are gone; before a trial starts, :func:`reap_strays` kills the
process group of every entry whose run (its *driver*) is dead, waits until that group is gone,
and removes the entry.

One folder per store (``$HAQA_HOME/trials/<hash of the store's path>``): a resume, or another run
on the same DuckDB file, finds what the dead run left. Each entry names the host and the create
times of the driver and of the group's leader, so a pid that the system has since given to an
unrelated process is never taken for the run's, nor its group killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from haqa.paths import haqa_home

log = logging.getLogger(__name__)

#: How long a reaped group may take to disappear before the trial goes ahead anyway.
REAP_WAIT_S = 10.0
#: Two create times closer than this are the same process (psutil's clock ticks are 10 ms).
_SAME_START_S = 0.005


class TrialProcess(BaseModel):
    """One live trial: the run that started it and the process group doing its work."""

    model_config = ConfigDict(frozen=True)

    store: str
    host: str
    driver_pid: int
    driver_started: float
    pgid: int
    leader_started: float
    method: str
    registered_at: float


def registry_dir(store: Path | None) -> Path:
    """The folder of a store's live trials (``None``: trials not tied to a store)."""
    key = str(store.expanduser().resolve()) if store is not None else "<no store>"
    return haqa_home() / "trials" / hashlib.sha256(key.encode()).hexdigest()[:16]


def process_started(pid: int) -> float | None:
    """When ``pid`` started (psutil's create time), or ``None`` when no live process has it (a
    zombie has finished: it uses no CPU and is only waiting to be reaped)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except psutil.Error:
        return None


def _same_process(pid: int, started: float) -> bool:
    now = process_started(pid)
    return now is not None and abs(now - started) < _SAME_START_S


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``."""
    import psutil

    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return members


def register(directory: Path, pgid: int, *, store: Path | None, method: str) -> Path | None:
    """Record that this process (the driver) runs a trial in process group ``pgid``; the entry's
    path, or ``None`` when it could not be written (the trial still runs: the processes die with
    this one anyway, the entry only lets a later run clean up after what did not)."""
    me = process_started(os.getpid())
    leader = process_started(pgid)
    if me is None or leader is None:
        return None  # the group's leader already ended: nothing left to record
    entry = TrialProcess(
        store=str(store) if store is not None else "",
        host=socket.gethostname(),
        driver_pid=os.getpid(),
        driver_started=me,
        pgid=pgid,
        leader_started=leader,
        method=method,
        registered_at=time.time(),
    )
    path = directory / f"{os.getpid()}-{pgid}.json"
    tmp = path.with_suffix(".tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(entry.model_dump_json())
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not record trial process group %d in %s: %s", pgid, directory, exc)
        return None
    return path


def unregister(path: Path | None) -> None:
    """Remove a trial's entry once its processes are gone."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _kill_group(entry: TrialProcess) -> bool:
    """SIGKILL the entry's process group, unless its number now belongs to someone else; whether
    the group was the trial's.

    While any process of a group lives, Linux gives neither its number as a new pid nor as a new
    group's, so a group whose leader is gone is still the trial's; a live leader must be the
    recorded one (same create time), else the group died and its number was given again."""
    leader = process_started(entry.pgid)
    if leader is not None and abs(leader - entry.leader_started) >= _SAME_START_S:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(entry.pgid, signal.SIGKILL)
    return True


def reap_strays(directory: Path, *, wait_s: float = REAP_WAIT_S) -> list[TrialProcess]:
    """Kill the trial processes of dead runs recorded in ``directory`` and wait until they are
    gone; return their entries. Entries of live runs (another run on the same store) and of other
    hosts (a shared HAQA_HOME) are left alone; unreadable entries are removed."""
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    host = socket.gethostname()
    reaped: list[tuple[Path, TrialProcess]] = []
    for path in paths:
        try:
            entry = TrialProcess.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            unregister(path)
            continue
        if entry.host != host or _same_process(entry.driver_pid, entry.driver_started):
            continue
        if _kill_group(entry):
            reaped.append((path, entry))
        else:
            unregister(path)
    deadline = time.monotonic() + wait_s
    for path, entry in reaped:
        while group_members(entry.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_members(entry.pgid):
            log.warning("trial process group %d of a dead run is still alive", entry.pgid)
            continue  # tried again before the next trial
        log.warning(
            "killed the stray %s trial (process group %d) of dead run process %d",
            entry.method,
            entry.pgid,
            entry.driver_pid,
        )
        unregister(path)
    return [entry for _, entry in reaped]
