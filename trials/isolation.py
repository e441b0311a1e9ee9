"""Trial isolation: each trial's work runs in a child process with a wall-clock timeout and a
memory limit, so a segfault in a kernel, an OOM or a hang costs one ``failed`` trial, not the run.

The child is ``python -m haqa.trials.worker REQUEST RESPONSE`` (a fresh interpreter: no
state shared with the graph, no fork of a process holding threads). Its output goes to a log file
whose tail becomes the failed trial's reason. The parent watches the child's whole process tree:
resident memory above the limit → killed and reported as out of memory; past the timeout →
killed and reported as a hang.

A trial's processes never outlive the run (a resumed run must not measure beside them): the worker
leads its own process group, which its children (the benchmark, the measurements) stay in; each of
them dies with its parent (``haqa.procs``: death signal, parent check, watchdog); the parent kills
the group on any exception and when the trial ends; and every live group is recorded in the store's
trial registry (``haqa.trials.registry``), whose entries of dead runs are killed before a trial
starts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from haqa.errors import HaqaError
from haqa.procs import child_env
from haqa.schemas import DeployConfig, FinetuneConfig, RuntimeSettings, TrialMetrics
from haqa.trials.registry import reap_strays, register, registry_dir, unregister
from haqa.trials.toolbox import LiveToolbox, ToolboxSettings

ARG_TYPES: dict[str, type[BaseModel]] = {
    "FinetuneConfig": FinetuneConfig,
    "DeployConfig": DeployConfig,
    "RuntimeSettings": RuntimeSettings,
}
LOG_TAIL_CHARS = 1500


class TrialCrash(Exception):
    """The child died, ran out of memory or time; the message is the trial's failure reason."""


def encode_arg(value: Any) -> dict[str, Any]:
    if isinstance(value, BaseModel):
        return {"type": type(value).__name__, "value": value.model_dump(mode="json")}
    return {"type": "json", "value": value}


def decode_arg(item: dict[str, Any]) -> Any:
    if item["type"] == "json":
        return item["value"]
    return ARG_TYPES[item["type"]].model_validate(item["value"])


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip() and "%|" not in line]
    return " | ".join(lines)[-LOG_TAIL_CHARS:]


class IsolatedToolbox:
    """The same interface as ``LiveToolbox``; every call that measures runs in a child process."""

    recorded = False

    def __init__(
        self,
        settings: ToolboxSettings,
        *,
        timeout_s: float = 3600.0,
        memory_limit_bytes: int | None = None,
        factory: str = "haqa.trials.toolbox:LiveToolbox",
        store_path: Path | None = None,
    ) -> None:
        """``store_path``: the run's DuckDB file, whose trial registry this toolbox keeps (a
        resume of the run, or another run on the same store, reaps what a dead run left)."""
        import psutil

        self.settings = settings
        self.store_path = store_path
        self.registry = registry_dir(store_path)
        self.timeout_s = timeout_s
        # Default: most of this machine's RAM, so a runaway trial cannot take the machine down.
        self.memory_limit_bytes = memory_limit_bytes or int(psutil.virtual_memory().total * 0.9)
        self.factory = factory
        self._estimator: LiveToolbox | None = None

    @property
    def estimator(self) -> LiveToolbox:
        """One in-process toolbox for the memory gate's estimates, so what they read once (the
        longest training example, tokenized) is read once per run, not once per gate check."""
        if self._estimator is None:
            self._estimator = LiveToolbox(self.settings)
        return self._estimator

    def _call(self, method: str, *args: Any) -> Any:
        # No trial measures beside a stray of a dead run on this store (a killed run's trial).
        reap_strays(self.registry)
        with tempfile.TemporaryDirectory(prefix="haqa-trial-") as tmp:
            request, response, log = Path(tmp, "request.json"), Path(tmp, "response.json"), None
            log = Path(tmp, "trial.log")
            request.write_text(
                json.dumps(
                    {
                        "factory": self.factory,
                        "settings": self.settings.model_dump(mode="json"),
                        "method": method,
                        "args": [encode_arg(a) for a in args],
                    }
                )
            )
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "haqa.trials.worker", str(request), str(response)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own process group, which its children stay in: killed as a whole.
                    start_new_session=True,
                    env=child_env(),  # our pid: the worker checks it is still its parent
                )
                entry = register(self.registry, proc.pid, store=self.store_path, method=method)
                try:
                    self._watch(proc, method, log)
                finally:
                    # On any exception, and after a normal end: whatever the trial left running
                    # in its group is a stray that would disturb the next measurement.
                    _kill_tree(proc)
                    unregister(entry)
            if proc.returncode != 0 or not response.is_file():
                raise TrialCrash(self._death(proc.returncode, log))
            reply = json.loads(response.read_text())
        if not reply.get("ok"):
            if reply.get("user_error"):
                raise HaqaError(str(reply["error"]))
            raise TrialCrash(str(reply.get("error")))
        return reply.get("value")

    def _watch(self, proc: subprocess.Popen[bytes], method: str, log: Path) -> None:
        deadline = time.monotonic() + self.timeout_s
        peak = 0
        while proc.poll() is None:
            rss = _tree_rss(proc.pid)
            peak = max(peak, rss)
            if rss > self.memory_limit_bytes:
                _kill_tree(proc)
                raise TrialCrash(
                    f"out of memory: {method} used {rss / 2**20:.0f} MiB, over the trial limit of "
                    f"{self.memory_limit_bytes / 2**20:.0f} MiB; log: {_tail(log)}"
                )
            if time.monotonic() > deadline:
                _kill_tree(proc)
                raise TrialCrash(
                    f"timed out: {method} ran past {self.timeout_s:.0f} s; log: {_tail(log)}"
                )
            time.sleep(0.05)

    @staticmethod
    def _death(code: int | None, log: Path) -> str:
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = {"SIGSEGV": "segfault", "SIGKILL": "killed (out of memory?)", "SIGABRT": "abort"}
            return f"crashed: {what.get(name, name)} ({name}); log: {_tail(log)}"
        return f"exited with code {code}; log: {_tail(log)}"

    # -- the Toolbox interface ---------------------------------------------------------------

    def probe(self) -> dict[str, Any]:
        return dict(self._call("probe"))

    def microbench(self) -> dict[str, Any]:
        return dict(self._call("microbench"))

    def evaluate_base(self) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("evaluate_base"))

    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("finetune", config))

    def reference(self, adapter: str | None) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("reference", adapter))

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("deploy", config, adapter))

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("baseline", quant_type, runtime, adapter))

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("final_test", config, adapter))

    def measure_gguf(self, gguf: str, config: DeployConfig) -> TrialMetrics:
        return TrialMetrics.model_validate(self._call("measure_gguf", gguf, config))

    # The memory gate's estimates read file headers only: cheap and safe in-process.
    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]:
        return self.estimator.estimate_deploy(config)

    # The probe runs llama.cpp: in a worker like any measurement. Its result is cached on disk
    # by content, where the estimates (in-process) and the trial workers read it.
    def tensor_sensitivity(self) -> dict[str, Any] | None:
        value = self._call("tensor_sensitivity")
        return None if value is None else dict(value)

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]:
        return self.estimator.estimate_finetune(config)
