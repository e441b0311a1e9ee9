"""A trial's processes die with the run that started them (issue #14): a killed run leaves no
benchmark running beside the next run's measurements, and a run reaps what a dead one left.

Every process a test here starts carries a marker in its environment (inherited by its
children), so the test finds its own processes, and only those, wherever they were reparented;
each is killed by pid in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from haqa.procs import CHILD_PRELUDE, PARENT_PID_ENV, child_env
from haqa.trials.registry import (
    TrialProcess,
    process_started,
    reap_strays,
    register,
    registry_dir,
)

Popen = subprocess.Popen[str]
MARK = "HAQA_TEST_PROCS_MARK"
SLEEPER = "import time; time.sleep(600)"
# A process that starts a child in its own process group (as the trial worker starts the
# benchmark), prints the child's pid, then sleeps.
PARENT_OF_SLEEPER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', {code!r}], env={env})\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture()
def mark(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A marker in the environment of every process this test starts; they are all killed after
    the test, by pid, whatever it asserted."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)
    try:
        yield value
    finally:
        _kill_marked(value)


def _marked(value: str) -> list[psutil.Process]:
    """This test's live processes (not zombies), wherever they are in the process tree."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(MARK) == value:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _kill_marked(value: str) -> None:
    for proc in _marked(value):
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _gone(pids: list[int], within_s: float) -> bool:
    """Whether every one of ``pids`` has ended (or is only a zombie) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while any(process_started(p) is not None for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _start_parent_of_sleeper(child_code: str, *, child_env_expr: str) -> tuple[Popen, int]:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_OF_SLEEPER.format(code=child_code, env=child_env_expr)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


# -- a child dies with its parent -------------------------------------------------------------


@pytest.mark.parametrize("with_prctl", [True, False])
def test_a_child_dies_with_its_parent(mark: str, with_prctl: bool) -> None:
    """``kill -9`` of the parent ends the child: by the kernel's death signal, and where there is
    none (other platforms, simulated here) by the watchdog thread."""
    arm = "" if with_prctl else "_haqa_procs.set_parent_death_signal = lambda *a: False\n"
    code = "import haqa.procs as _haqa_procs\n" + arm + "_haqa_procs.die_with_parent()\n" + SLEEPER
    env = "__import__('haqa.procs').procs.child_env()"
    parent, child = _start_parent_of_sleeper(code, child_env_expr=env)
    try:
        time.sleep(1.0)  # the child is past its imports and armed
        assert process_started(child) is not None
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        assert _gone([child], within_s=3.0)
    finally:
        parent.kill()
        parent.wait(10)


def test_a_child_whose_parent_died_before_it_armed_exits_at_once(mark: str) -> None:
    """The race the parent check closes: the parent named in the environment is not this
    process's parent any more (here: it never was), so the child goes before doing anything."""
    env = {**os.environ, PARENT_PID_ENV: str(os.getpid() + 1_000_000)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + "print('measured')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL
    assert "measured" not in proc.stdout


def test_the_parent_pid_is_not_inherited_by_grandchildren(mark: str) -> None:
    """A grandchild started without ``child_env`` must not take its grandparent for its parent
    (and kill itself): the child removes the variable once read."""
    code = CHILD_PRELUDE + (
        "import os, subprocess, sys\n"
        f"assert {PARENT_PID_ENV!r} not in os.environ\n"
        "subprocess.run([sys.executable, '-c', "
        f"{CHILD_PRELUDE + 'print(42)'!r}], check=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42"


# -- the registry: a run reaps what a dead one left ---------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


def _entry(driver: int, driver_started: float, pgid: int, leader_started: float) -> TrialProcess:
    import socket

    return TrialProcess(
        store="test",
        host=socket.gethostname(),
        driver_pid=driver,
        driver_started=driver_started,
        pgid=pgid,
        leader_started=leader_started,
        method="deploy",
        registered_at=time.time(),
    )


def _write(directory: Path, entry: TrialProcess) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{entry.driver_pid}-{entry.pgid}.json"
    path.write_text(entry.model_dump_json())
    return path


def test_reaping_kills_the_stray_group_of_a_dead_run_only(mark: str, tmp_path: Path) -> None:
    """A group whose driver is dead is killed with its grandchild and its entry removed; the
    group of a live driver (another run on the same store) and a group whose leader's pid now
    belongs to another process are left alone."""
    directory = tmp_path / "trials"
    stray, stray_child = _start_parent_of_sleeper(SLEEPER, child_env_expr="None")
    live, live_child = _start_parent_of_sleeper(SLEEPER, child_env_expr="None")
    reused, _ = _start_parent_of_sleeper(SLEEPER, child_env_expr="None")
    try:
        dead = _dead_pid()
        started = process_started(stray.pid)
        assert started is not None
        stray_entry = _write(directory, _entry(dead, 0.0, stray.pid, started))
        me = process_started(os.getpid())
        assert me is not None
        live_started = process_started(live.pid)
        assert live_started is not None
        live_entry = _write(directory, _entry(os.getpid(), me, live.pid, live_started))
        # The recorded leader started long ago: this live process only got its pid since.
        reused_entry = _write(directory, _entry(dead, 0.0, reused.pid, 1.0))

        reaped = reap_strays(directory)

        assert [e.pgid for e in reaped] == [stray.pid]
        assert _gone([stray.pid, stray_child], within_s=0.5)  # reap waits until they are gone
        assert not stray_entry.exists()
        assert process_started(live.pid) is not None
        assert process_started(live_child) is not None
        assert live_entry.exists()
        assert process_started(reused.pid) is not None
        assert not reused_entry.exists()
    finally:
        for proc in (stray, live, reused):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_an_isolated_toolbox_reaps_before_its_trial_and_unregisters_after(
    mark: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring: a trial of an ``IsolatedToolbox`` on a store first kills a dead run's stray
    recorded for that store, and leaves no entry of its own behind."""
    from support.faulty_toolbox import FACTORY as FAULTY_FACTORY

    from haqa.schemas import FinetuneConfig
    from haqa.trials.isolation import IsolatedToolbox
    from haqa.trials.toolbox import ToolboxSettings

    monkeypatch.setenv("HAQA_HOME", str(tmp_path / "home"))
    here = str(Path(__file__).parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    )
    db = tmp_path / "haqa.duckdb"
    stray, stray_child = _start_parent_of_sleeper(SLEEPER, child_env_expr="None")
    try:
        started = process_started(stray.pid)
        assert started is not None
        _write(registry_dir(db), _entry(_dead_pid(), 0.0, stray.pid, started))
        settings = ToolboxSettings(
            model=tmp_path, train_files=[], validation_files=[], test_files=[]
        )
        box = IsolatedToolbox(settings, factory=FAULTY_FACTORY, store_path=db)
        assert box.finetune(FinetuneConfig(seed=1)).accuracy == 0.5
        assert _gone([stray.pid, stray_child], within_s=0.5)
        assert not list(registry_dir(db).glob("*.json"))
    finally:
        os.killpg(stray.pid, signal.SIGKILL)
        stray.wait(10)


def test_register_records_this_driver_and_the_group(tmp_path: Path) -> None:
    path = register(tmp_path, os.getpid(), store=tmp_path / "x.duckdb", method="probe")
    assert path is not None
    entry = TrialProcess.model_validate_json(path.read_text())
    assert entry.driver_pid == os.getpid() == entry.pgid
    assert entry.driver_started == process_started(os.getpid())
    assert reap_strays(tmp_path) == []  # its driver (this process) is alive
    assert path.exists()


# -- a real run, killed mid-benchmark ----------------------------------------------------------


def _benchmark_running(driver: int) -> bool:
    try:
        procs = psutil.Process(driver).children(recursive=True)
    except psutil.Error:
        return False
    for proc in procs:
        try:
            if "haqa.tools.benchmark_llamacpp" in " ".join(proc.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


@pytest.mark.slow
def test_a_run_killed_mid_benchmark_leaves_no_process_behind(
    mark: str, tiny_model: Path, tmp_path: Path
) -> None:
    """``kill -9`` of ``haqa run`` (its driver alone, as a user would) while a deploy benchmark
    runs: within seconds no process of the run is left — not the trial worker, not its
    benchmark."""
    db = tmp_path / "haqa.duckdb"
    toml = tmp_path / "run.toml"
    toml.write_text("quick_analysis = true\n")  # fewer microbenchmark repeats
    args = [
        "run", "--db", str(db), "--config", str(toml), "--model", "zoo:tiny",
        "--finetune-trials", "0", "--deploy-trials", "2", "--eval-limit", "5",
        # A benchmark of some seconds on the tiny model: the test catches it running.
        "--n-prompt", "256", "--n-gen", "128", "--repetitions", "20",
        "--report-dir", str(tmp_path / "report"), "--max-accuracy-drop", "50",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "run.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "haqa", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # not in pytest's group; only the driver pid is killed below
    )
    try:
        deadline = time.monotonic() + 600
        while not _benchmark_running(driver.pid):
            assert time.monotonic() < deadline, "no benchmark ran"
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.05)
        before = _marked(mark)
        assert len(before) >= 3, before  # the driver, the trial worker, the benchmark
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
        assert _gone([p.pid for p in before], within_s=5.0), [
            (p.pid, p.cmdline()) for p in _marked(mark)
        ]
        assert not _marked(mark)
    finally:
        driver.kill()
        driver.wait(30)
        log.close()
