"""``haqa cluster resources``: what this machine advertises when it joins a Ray cluster.

A haqa node names its device kind (its hardware fingerprint) as a Ray custom resource; pass the
printed JSON to ``ray start --resources`` (docs/cluster.md). Imports no Ray: it only probes.
"""

from __future__ import annotations

import json

import typer

from haqa.cli import app

cluster_app = typer.Typer(help="Ray clusters: what a node advertises (docs/cluster.md).")
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("resources")
def resources_command() -> None:
    """Print this machine's Ray resources as JSON, for `ray start --resources '...'`."""
    from haqa.tools.probe_hardware import Args, probe_hardware
    from haqa.trials.cluster import node_resources

    fingerprint = probe_hardware(Args(measure_bandwidth=False)).fingerprint
    print(json.dumps(node_resources(fingerprint)))
