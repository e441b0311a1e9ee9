"""Which stored run a new run is gated against (``--baseline RUN|latest``), checked before the run
starts: a wrong baseline is bad input, found in a second, not after ten minutes of measuring.

Figures hold only for the machine they were measured on, so a baseline must carry this machine's
hardware fingerprint; ``latest`` is the newest finished run of the same model on this machine
whose answer met its goal. When there is none yet (a pipeline's first run), the gate is skipped
and says so: that run becomes the next one's baseline. The resolved run id is stored with the new
run's config, so a resumed run compares with the same run, not with one finished meanwhile.
"""

from __future__ import annotations

from haqa.errors import HaqaError
from haqa.graph.config import RunConfig
from haqa.store import RunRecord, Store


def _found(run: RunRecord) -> bool:
    return run.status == "finished" and bool((run.result or {}).get("found"))


def resolve_baseline(store: Store, cfg: RunConfig, fingerprint: str) -> RunConfig:
    """``cfg`` with ``baseline_run`` set (None: ``latest`` found no run to compare with)."""
    cfg.regression_limits()  # --max-regression without --baseline: one line, now
    if cfg.baseline is None or cfg.baseline_run is not None:
        return cfg
    if cfg.baseline == "latest":
        latest = next(
            (
                r
                for r in store.list_runs()
                if _found(r) and r.model == cfg.model and r.hardware_fingerprint == fingerprint
            ),
            None,
        )
        return cfg.model_copy(update={"baseline_run": latest.run_id if latest else None})
    run = store.get_run(cfg.baseline)  # an unknown id: one line naming `haqa runs`
    if not _found(run):
        raise HaqaError(
            f"--baseline {run.run_id}: that run has no answer that met its goal (status "
            f"{run.status}); pick one with `haqa runs`"
        )
    if run.hardware_fingerprint != fingerprint:
        raise HaqaError(
            f"--baseline {run.run_id} was measured on another machine (hardware fingerprint "
            f"{run.hardware_fingerprint}; this one is {fingerprint}): figures compare only on the "
            "same hardware, so pick a run of this machine with `haqa runs`"
        )
    return cfg.model_copy(update={"baseline_run": run.run_id})
