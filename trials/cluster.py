"""A Ray cluster as haqa sees it: its nodes, each node's device kind, and where a trial may go.

Each haqa node advertises its hardware fingerprint (``probe_hardware``) as a Ray custom
resource, ``haqa_fp_<fingerprint>: 1`` — ``haqa cluster resources`` prints it for ``ray start
--resources``. The one unit is also the node's *speed slot*: a speed trial (a benchmark, a
probe) takes it and every CPU the node offers, so it runs alone on its node; fine-tunes and
accuracy scoring take one CPU (and their memory estimate) and run anywhere that fits, several at
once — when several are sent at once: a run sends one trial at a time (each trial is a decision on
the ones before it), so several at once means a batch of ``Dispatcher.run_many`` or several runs
sharing the cluster. ``bench/scaling.py`` measures such a batch: the dispatcher's ceiling, not
the throughput of ``haqa run``.

Ray is imported inside the functions that use it: this module is what the CLI reads to print a
node's resources, and without ``--cluster`` nothing imports Ray.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from haqa.errors import HaqaError

#: The prefix of the custom resource that names a node's device kind.
FINGERPRINT_PREFIX = "haqa_fp_"
#: The methods of the Toolbox interface whose figures depend on the node's hardware: they run
#: on a node of the target kind, alone on it.
SPEED_METHODS = frozenset({"probe", "microbench", "deploy", "baseline", "measure_gguf"})


def kind_resource(fingerprint: str) -> str:
    """The Ray resource a node of this device kind advertises."""
    return f"{FINGERPRINT_PREFIX}{fingerprint}"


def node_resources(fingerprint: str) -> dict[str, float]:
    """What a haqa node advertises: its kind, one unit (the node's speed slot)."""
    return {kind_resource(fingerprint): 1.0}


def first_line(text: str) -> str:
    """The first non-empty line of an error's text (Ray's run to tracebacks and advice)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@runtime_checkable
class OnCluster(Protocol):
    """A toolbox whose trials run on a cluster (``trials/ray_backend.py``)."""

    def speed_target(self) -> tuple[str, int]:
        """The device kind its speed trials run on, and the CPUs a node of that kind offers."""
        ...

    def close(self) -> None:
        """Leave the cluster (and stop it, when this process started it)."""
        ...


class ClusterNode(BaseModel):
    """One live node of the cluster, as the driver reads it from Ray."""

    model_config = ConfigDict(frozen=True)

    node_id: str
    hostname: str
    address: str
    fingerprint: str | None
    cpus: float
    memory_bytes: float


def _node(entry: dict[str, Any]) -> ClusterNode:
    resources: dict[str, float] = entry.get("Resources") or {}
    kinds = [k[len(FINGERPRINT_PREFIX) :] for k in resources if k.startswith(FINGERPRINT_PREFIX)]
    return ClusterNode(
        node_id=str(entry["NodeID"]),
        hostname=str(entry.get("NodeManagerHostname", "")),
        address=str(entry.get("NodeManagerAddress", "")),
        fingerprint=kinds[0] if kinds else None,
        cpus=float(resources.get("CPU", 0.0)),
        memory_bytes=float(resources.get("memory", 0.0)),
    )


def _ray_nodes() -> list[dict[str, Any]]:
    """Every node the cluster's control store knows, dead ones included (Ray's own records)."""
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


class ClusterSession:
    """This driver's connection to a cluster (one per process, as Ray allows)."""

    def __init__(self, address: str, *, started_local: bool) -> None:
        self.address = address
        self.started_local = started_local

    def nodes(self) -> list[ClusterNode]:
        """The live nodes, as the cluster's control store knows them now."""

        return [_node(n) for n in _ray_nodes() if n.get("Alive")]

    def node(self, node_id: str) -> ClusterNode | None:
        """A node by id (a node that died since is still found while Ray remembers it)."""
        for n in _ray_nodes():
            if n.get("NodeID") == node_id:
                return _node(n)
        return None

    def kinds(self) -> dict[str, list[ClusterNode]]:
        """Live haqa nodes by device kind (fingerprint)."""
        out: dict[str, list[ClusterNode]] = {}
        for n in self.nodes():
            if n.fingerprint is not None:
                out.setdefault(n.fingerprint, []).append(n)
        return out

    def resolve_target(self, requested: str | None) -> str:
        """The device kind a run's speed trials go to: the one asked for, else the cluster's only
        kind; a one-line error naming the kinds otherwise."""
        kinds = self.kinds()
        if requested is not None:
            if requested not in kinds:
                raise HaqaError(
                    f"no live node of device kind {requested} in the cluster at {self.address} "
                    f"(kinds: {', '.join(sorted(kinds)) or 'none'}); start one with `ray start "
                    '--address ... --resources "$(haqa cluster resources)"`'
                )
            return requested
        if len(kinds) == 1:
            return next(iter(kinds))
        if not kinds:
            raise HaqaError(
                f"the cluster at {self.address} has no haqa node: start its nodes with "
                '`ray start ... --resources "$(haqa cluster resources)"`'
            )
        raise HaqaError(
            f"the cluster has several device kinds ({', '.join(sorted(kinds))}): pass --target "
            "FINGERPRINT"
        )

    def resolve_targets(self, requested: list[str]) -> list[str]:
        """The device kinds of a fleet run (``--targets``): ``all`` (every kind the cluster has,
        sorted), else the ones asked for, each of which must have a live node; a one-line error
        naming the cluster's kinds otherwise."""
        kinds = self.kinds()
        if not kinds:
            raise HaqaError(
                f"the cluster at {self.address} has no haqa node: start its nodes with "
                '`ray start ... --resources "$(haqa cluster resources)"`'
            )
        if requested == ["all"]:
            return sorted(kinds)
        missing = [k for k in requested if k not in kinds]
        if missing:
            raise HaqaError(
                f"--targets: no live node of device kind {', '.join(missing)} in the cluster at "
                f"{self.address} (kinds: {', '.join(sorted(kinds))})"
            )
        return list(requested)

    def close(self) -> None:
        """Disconnect (and stop the cluster, when this process started it: ``local``)."""
        import ray

        if ray.is_initialized():
            ray.shutdown()


def connect(address: str, *, local_fingerprint: str | None = None) -> ClusterSession:
    """Join the cluster at ``address`` (``auto``, ``ray://host:port``, ``host:port``), or start a
    one-node cluster of this machine (``local``), advertising ``local_fingerprint``.

    Workers' output is not forwarded: with ``--json`` the driver's stdout holds the answer only."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            if local_fingerprint is None:
                raise HaqaError("a local cluster needs this machine's fingerprint")
            ray.init(
                num_cpus=os.cpu_count() or 1,
                resources=node_resources(local_fingerprint),
                include_dashboard=False,
                **quiet,
            )
            return ClusterSession("local", started_local=True)
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise HaqaError(f"--cluster {address}: cannot connect ({first_line(str(exc))})") from exc
    return ClusterSession(address, started_local=False)
