"""The cluster backend of the Toolbox interface: each trial is a Ray task (``haqa run --cluster``).

The driver keeps the graph, the brains and the store (its one writer); a task only computes and
returns its result, with the node it ran on, which the driver records with the trial
(``TrialMetrics.node``). Placement follows what a trial measures (``trials/cluster.py``): a
speed trial alone on a node of the run's target device kind, a fine-tune or a scoring anywhere.

On its node a live trial runs as it does on one machine: in a child process with a timeout and a
memory limit (``IsolatedToolbox``), so a crash there is a ``failed`` trial with its log. A node
that dies mid-trial (its raylet killed, the machine gone) costs that attempt: the trial is
submitted again, to another node of the same kind, and recorded ``failed`` with the reason only
when every attempt was lost.

A recorded grid (``--tabular``) is served the same way: the driver picks the recorded
measurement, and a task on a node of the grid's kind waits out its recorded duration.

A run sends one trial at a time (``RayToolbox``, ``RecordedRayToolbox``): each trial is a
decision made on the ones before it. ``Dispatcher.run_many`` sends a batch at once; that is
what ``bench/scaling.py`` measures — the dispatcher's ceiling, not a run's throughput.

Imported only with ``--cluster``: it imports Ray.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import defaultdict
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict

from haqa.errors import HaqaError
from haqa.schemas import DeployConfig, FinetuneConfig, RuntimeSettings, TrialMetrics, TrialNode
from haqa.store import Store
from haqa.trials.cluster import (
    SPEED_METHODS,
    ClusterNode,
    ClusterSession,
    connect,
    first_line,
    kind_resource,
)
from haqa.trials.isolation import TrialCrash, encode_arg
from haqa.trials.tabular import TabularToolbox
from haqa.trials.toolbox import LiveToolbox, Toolbox, ToolboxSettings

#: Attempts lost to a node fault before the trial is recorded ``failed``.
DEFAULT_ATTEMPTS = 2
#: How long past a trial's own limit (a live trial's timeout, a replay's duration) the driver
#: waits for a result with nothing finishing: a worker's start-up, a queue on a busy cluster.
SCHEDULING_SLACK_S = 120.0
#: How often a waiting driver looks at the cluster again (is a node that can take it left?).
POLL_S = 1.0
#: After a node fault, how long the driver waits to see the node marked dead before the retry.
DEAD_NODE_WAIT_S = 10.0
#: What a lost node or worker raises: the attempt is lost, not the trial; anything else a task
#: raises (out of memory, its own exception) is the trial's failure.
NODE_FAULTS = (
    ray.exceptions.NodeDiedError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.ObjectLostError,
)


class TaskCall(BaseModel):
    """One trial as a task: the toolbox method, and either a live request or a replay."""

    model_config = ConfigDict(frozen=True)

    method: str
    request: dict[str, Any] | None = None  # live: factory, settings, args, limits
    replay: dict[str, Any] | None = None  # recorded: the measurement
    duration_s: float = 0.0  # recorded: how long it took when it was measured
    memory_bytes: int | None = None  # the trial's memory estimate (fine-tunes)

    def limit_s(self) -> float:
        """How long the trial itself may take: a live trial's timeout, a replay's duration."""
        if self.request and "timeout_s" in self.request:
            return float(self.request["timeout_s"])
        return self.duration_s


def _line(error: BaseException) -> str:
    return first_line(str(error)) or type(error).__name__


def _task_error(method: str, error: Exception) -> str:
    """What a task raised, as its trial's one-line failure reason."""
    if isinstance(error, ray.exceptions.OutOfMemoryError):
        return f"{method}: out of memory on its node, Ray stopped the task ({_line(error)})"
    if isinstance(error, ray.exceptions.RayTaskError):
        cause = error.cause
        return f"{method} raised {type(cause).__name__}: {_line(cause)}"
    return f"{method} failed on the cluster: {type(error).__name__}: {_line(error)}"


def _here() -> dict[str, Any]:
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}


@ray.remote(max_retries=0)
def run_live(request: dict[str, Any]) -> dict[str, Any]:
    """On the worker node: the call in a child process, with the run's timeout and memory limit."""
    from haqa.trials.isolation import IsolatedToolbox, decode_arg
    from haqa.trials.worker import _jsonable

    box = IsolatedToolbox(
        ToolboxSettings.model_validate(request["settings"]),
        timeout_s=float(request["timeout_s"]),
        memory_limit_bytes=request.get("memory_limit_bytes"),
        factory=str(request["factory"]),
    )
    args = [decode_arg(a) for a in request["args"]]
    try:
        value = getattr(box, str(request["method"]))(*args)
        return {"ok": True, "value": _jsonable(value), **_here()}
    except HaqaError as exc:
        return {"ok": False, "user_error": True, "error": str(exc), **_here()}
    except TrialCrash as exc:
        return {"ok": False, "error": str(exc), **_here()}


@ray.remote(max_retries=0)
def replay_recorded(measurement: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """On the worker node: a recorded measurement, returned after its recorded duration."""
    time.sleep(duration_s)
    return {"ok": True, "value": measurement, **_here()}


class Dispatcher:
    """Submits trials as tasks placed by what they measure, retries those a node fault lost, and
    tells where each ran."""

    def __init__(
        self, session: ClusterSession, target: str, *, attempts: int = DEFAULT_ATTEMPTS
    ) -> None:
        self.session = session
        self.target = target
        self.attempts = attempts
        kind = session.kinds().get(target, [])
        #: The CPUs a node of the target kind offers (its smallest), as read when joining.
        self.target_cpus = max(1, int(min(n.cpus for n in kind))) if kind else 1

    def options(self, call: TaskCall, nodes: list[ClusterNode] | None = None) -> dict[str, Any]:
        """Placement: a speed trial takes the target kind's speed slot and all its nodes' CPUs
        (alone on its node); any other trial one CPU and its memory estimate (anywhere). A trial
        no live node can take is a failed trial now, not a task that waits forever."""
        nodes = self.session.nodes() if nodes is None else nodes
        if call.method in SPEED_METHODS:
            kind = [n for n in nodes if n.fingerprint == self.target]
            if not kind:
                raise TrialCrash(f"no live node of device kind {self.target} is left")
            cpus = min(n.cpus for n in kind)
            return {"resources": {kind_resource(self.target): 1.0}, "num_cpus": cpus}
        opts: dict[str, Any] = {"num_cpus": 1}
        if call.memory_bytes:
            room = max((n.memory_bytes for n in nodes if n.cpus), default=0.0)
            if call.memory_bytes > room:
                raise TrialCrash(
                    f"{call.method} needs {call.memory_bytes / 2**20:.0f} MiB (its estimate); "
                    f"the largest node with a CPU offers {room / 2**20:.0f} MiB"
                )
            opts["memory"] = call.memory_bytes
        return opts

    def _submit(self, call: TaskCall) -> Any:
        if call.replay is not None:
            return replay_recorded.options(**self.options(call)).remote(
                call.replay, call.duration_s
            )
        return run_live.options(**self.options(call)).remote(call.request or {})

    def run_many(self, calls: list[TaskCall]) -> list[tuple[Any, TrialNode]]:
        """Run the calls at once (as far as placement lets them); each one's value and node, in
        order. A node fault resubmits the call; a trial's own failure raises (``TrialCrash``,
        one line), and so does a wait past the calls' own limits plus ``SCHEDULING_SLACK_S``
        with nothing finishing, or a call no live node can take any more."""
        lost: dict[int, int] = defaultdict(int)
        done: dict[int, tuple[Any, TrialNode]] = {}
        alive = {n.node_id for n in self.session.nodes()}
        pending = {i: self._submit(c) for i, c in enumerate(calls)}
        alive_then = dict.fromkeys(pending, alive)  # live nodes when each attempt was sent
        patience = max((c.limit_s() for c in calls), default=0.0) + SCHEDULING_SLACK_S
        progress = time.monotonic()
        try:
            while pending:
                index = {ref: i for i, ref in pending.items()}
                ready, _ = ray.wait(list(index), num_returns=len(index), timeout=POLL_S)
                for ref in ready:
                    i = index[ref]
                    try:
                        reply = ray.get(ref)
                    except NODE_FAULTS as exc:  # the node or the worker under it went away
                        lost[i] += 1
                        if lost[i] >= self.attempts:
                            raise TrialCrash(
                                f"node fault: {calls[i].method} lost {lost[i]} attempt(s) to "
                                f"dying nodes; last: {type(exc).__name__}: {_line(exc)}"
                            ) from exc
                        now_alive = self._await_dead(alive_then[i], exc)
                        pending[i], alive_then[i] = self._submit(calls[i]), now_alive
                        continue
                    except ray.exceptions.RayError as exc:
                        raise TrialCrash(_task_error(calls[i].method, exc)) from exc
                    del pending[i]
                    progress = time.monotonic()
                    done[i] = (self._value(reply), self._where(reply, lost[i] + 1))
                if pending and not ready:
                    nodes = self.session.nodes()
                    for i in pending:  # a node of the kind (or the room) still there?
                        self.options(calls[i], nodes)
                    if time.monotonic() - progress > patience:
                        i = min(pending)
                        raise TrialCrash(
                            f"{calls[i].method}: no result from the cluster in "
                            f"{patience:.0f} s (its limit plus {SCHEDULING_SLACK_S:.0f} s to "
                            "be scheduled)"
                        )
        finally:
            for ref in pending.values():  # nothing of a failed batch keeps running
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
        return [done[i] for i in range(len(calls))]

    def _await_dead(self, alive_then: set[str], fault: Exception) -> set[str]:
        """After a node fault, wait (up to ``DEAD_NODE_WAIT_S``) until Ray has marked dead the
        node the fault names, else any node that was alive when the attempt was sent, so the
        retry is not placed on the dying node; the live nodes, read last."""
        named = {n for n in alive_then if n in str(fault)}
        deadline = time.monotonic() + DEAD_NODE_WAIT_S
        while True:
            alive = {n.node_id for n in self.session.nodes()}
            if ((named - alive) if named else (alive_then - alive)) or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def run(self, call: TaskCall) -> tuple[Any, TrialNode]:
        return self.run_many([call])[0]

    @staticmethod
    def _value(reply: dict[str, Any]) -> Any:
        if reply.get("ok"):
            return reply.get("value")
        if reply.get("user_error"):
            raise HaqaError(str(reply["error"]))
        raise TrialCrash(str(reply.get("error")))

    def _where(self, reply: dict[str, Any], attempts: int) -> TrialNode:
        node = self.session.node(str(reply["node_id"]))
        return TrialNode(
            node_id=str(reply["node_id"]),
            hostname=str(reply["hostname"]),
            fingerprint=node.fingerprint if node else None,
            attempts=attempts,
        )


def _metrics(value: Any, node: TrialNode) -> TrialMetrics:
    return TrialMetrics.model_validate(value).model_copy(update={"node": node})


class RayToolbox:
    """Live trials as Ray tasks; the memory gate's estimates stay in the driver (headers only)."""

    recorded = False

    def __init__(
        self,
        settings: ToolboxSettings,
        dispatcher: Dispatcher,
        *,
        timeout_s: float = 3600.0,
        memory_limit_bytes: int | None = None,
        factory: str = "haqa.trials.toolbox:LiveToolbox",
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.timeout_s = timeout_s
        self.memory_limit_bytes = memory_limit_bytes
        self.factory = factory
        self.estimator = LiveToolbox(settings)

    def close(self) -> None:
        self.dispatcher.session.close()

    def speed_target(self) -> tuple[str, int]:
        return self.dispatcher.target, self.dispatcher.target_cpus

    def _call(self, method: str, *args: Any, memory_bytes: int | None = None) -> Any:
        request = {
            "factory": self.factory,
            "settings": self.settings.model_dump(mode="json"),
            "method": method,
            "args": [encode_arg(a) for a in args],
            "timeout_s": self.timeout_s,
            "memory_limit_bytes": self.memory_limit_bytes,
        }
        call = TaskCall(method=method, request=request, memory_bytes=memory_bytes)
        return self.dispatcher.run(call)

    def _trial(self, method: str, *args: Any, memory_bytes: int | None = None) -> TrialMetrics:
        value, node = self._call(method, *args, memory_bytes=memory_bytes)
        return _metrics(value, node)

    def probe(self) -> dict[str, Any]:
        return dict(self._call("probe")[0])

    def microbench(self) -> dict[str, Any]:
        return dict(self._call("microbench")[0])

    def evaluate_base(self) -> TrialMetrics:
        return self._trial("evaluate_base")

    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        estimate = self.estimate_finetune(config).get("total_bytes")
        return self._trial("finetune", config, memory_bytes=int(estimate) if estimate else None)

    def reference(self, adapter: str | None) -> TrialMetrics:
        return self._trial("reference", adapter)

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return self._trial("deploy", config, adapter)

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        return self._trial("baseline", quant_type, runtime, adapter)

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return self._trial("final_test", config, adapter)

    def measure_gguf(self, gguf: str, config: DeployConfig) -> TrialMetrics:
        return self._trial("measure_gguf", gguf, config)

    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]:
        return self.estimator.estimate_deploy(config)

    def tensor_sensitivity(self) -> dict[str, Any] | None:
        """Probed on the driver, where the memory estimates are made; a worker on another
        machine probes the same file and text again for the probed recipes it quantizes."""
        return self.estimator.tensor_sensitivity()

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]:
        return self.estimator.estimate_finetune(config)


class RecordedRayToolbox:
    """A recorded grid served through the cluster: the driver picks each recorded measurement
    (cycling repeats, as ``TabularToolbox``), a task on a node of the grid's kind returns it
    after its recorded duration (times ``time_scale``, at least ``min_s``)."""

    recorded = True

    def __init__(
        self,
        store: Store,
        tabular: TabularToolbox,
        dispatcher: Dispatcher,
        *,
        time_scale: float = 1.0,
        min_s: float = 0.0,
    ) -> None:
        self.tabular = tabular
        self.grid = tabular.grid
        self.dispatcher = dispatcher
        self.time_scale = time_scale
        self.min_s = min_s
        self.durations: dict[str, list[float]] = defaultdict(list)
        for p in store.grid_points(tabular.grid.grid_id):
            self.durations[p.config_key].append(p.duration_s)
        self._served: dict[str, int] = defaultdict(int)

    def close(self) -> None:
        self.dispatcher.session.close()

    def speed_target(self) -> tuple[str, int]:
        return self.dispatcher.target, self.dispatcher.target_cpus

    def deploy_call(self, config: DeployConfig, method: str = "deploy") -> TaskCall:
        """The next recorded repeat of this configuration as a task, with its duration."""
        key = self.tabular._key(config)
        i = self._served[key]
        self._served[key] += 1
        measured = self.tabular.deploy(config, None)
        took = self.durations[key][i % len(self.durations[key])] if self.durations[key] else 0.0
        return TaskCall(
            method=method,
            replay=measured.model_dump(mode="json"),
            duration_s=max(took * self.time_scale, self.min_s),
        )

    def deploy_many(self, configs: list[DeployConfig]) -> list[TrialMetrics]:
        """Several deploy trials at once (a bench of dispatch, a grid served in parallel)."""
        calls = [self.deploy_call(c) for c in configs]
        return [_metrics(v, n) for v, n in self.dispatcher.run_many(calls)]

    def _scored(self, method: str, metrics: TrialMetrics) -> TrialMetrics:
        """A recorded accuracy, returned by a task that may run anywhere (as scoring does)."""
        value, node = self.dispatcher.run(
            TaskCall(method=method, replay=metrics.model_dump(mode="json"))
        )
        return _metrics(value, node)

    def probe(self) -> dict[str, Any]:
        return self.tabular.probe()

    def microbench(self) -> dict[str, Any]:
        return self.tabular.microbench()

    def evaluate_base(self) -> TrialMetrics:
        return self.tabular.evaluate_base()

    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        return self.tabular.finetune(config)

    def reference(self, adapter: str | None) -> TrialMetrics:
        return self._scored("reference", self.tabular.reference(adapter))

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        value, node = self.dispatcher.run(self.deploy_call(config))
        return _metrics(value, node)

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        config = DeployConfig(quant_type=quant_type, **runtime.model_dump())  # type: ignore[arg-type]
        value, node = self.dispatcher.run(self.deploy_call(config, "baseline"))
        return _metrics(value, node)

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return self._scored("final_test", self.tabular.final_test(config, adapter))

    def measure_gguf(self, gguf: str, config: DeployConfig) -> TrialMetrics:
        value, node = self.dispatcher.run(self.deploy_call(config, "measure_gguf"))
        return _metrics(value, node)

    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]:
        return self.tabular.estimate_deploy(config)

    def tensor_sensitivity(self) -> dict[str, Any] | None:
        return None

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]:
        return self.tabular.estimate_finetune(config)


def live_cluster_toolbox(
    address: str,
    target: str | None,
    settings: ToolboxSettings,
    *,
    timeout_s: float,
    memory_limit: int | None,
) -> Toolbox:
    """Join the cluster (``local``: start one of this machine) and send live trials to it; the
    speed trials to ``target``'s kind (default: the cluster's only kind)."""
    from haqa.tools.probe_hardware import Args, probe_hardware

    here = probe_hardware(Args(measure_bandwidth=False)).fingerprint if address == "local" else None
    session = connect(address, local_fingerprint=here)
    try:
        kind = session.resolve_target(target or here)
    except HaqaError:
        session.close()
        raise
    return RayToolbox(
        settings,
        Dispatcher(session, kind),
        timeout_s=timeout_s,
        memory_limit_bytes=memory_limit,
    )


def fleet_kinds(address: str, targets: list[str]) -> list[str]:
    """The device kinds a fleet run tunes for (``--targets all`` or fingerprints), read from the
    cluster's live nodes (``local``: this machine's kind)."""
    from haqa.tools.probe_hardware import Args, probe_hardware

    here = probe_hardware(Args(measure_bandwidth=False)).fingerprint if address == "local" else None
    session = connect(address, local_fingerprint=here)
    try:
        return session.resolve_targets(targets)
    finally:
        session.close()


def recorded_cluster_toolbox(
    address: str,
    store: Store,
    tabular: TabularToolbox,
    *,
    target: str | None = None,
    time_scale: float = 1.0,
    min_s: float = 0.0,
) -> Toolbox:
    """Serve a recorded grid through the cluster, its speed trials on nodes of the grid's kind."""
    fingerprint = tabular.grid.hardware_fingerprint
    if target is not None and target != fingerprint:
        raise HaqaError(
            f"--target {target}: grid {tabular.grid.grid_id} was recorded on device kind "
            f"{fingerprint}, and a grid answers only for its own kind"
        )
    session = connect(address, local_fingerprint=fingerprint)
    try:
        kind = session.resolve_target(fingerprint)
    except HaqaError:
        session.close()
        raise
    return RecordedRayToolbox(
        store, tabular, Dispatcher(session, kind), time_scale=time_scale, min_s=min_s
    )
