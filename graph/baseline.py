"""Which stored run a new run is gated against (``--baseline RUN|latest``), checked before the run
starts: a wrong baseline is bad input, found in a second, not after ten minutes of measuring.

Figures hold only for the machine they were measured on, so a baseline must carry this machine's
hardware fingerprint; ``latest`` is the newest finished run of the same model (and speed model)
on this machine whose answer met its goal and passed its own gate. When there is none yet (a
pipeline's first run), the gate is skipped and says so: that run becomes the next one's baseline.
The resolved run id is stored with the new run's config, so a resumed run compares with the same
run, not with one finished meanwhile.
"""

from __future__ import annotations

from pydantic import ValidationError

from haqa.agents.supervisor.result import RunResult
from haqa.errors import HaqaError
from haqa.graph.config import RunConfig
from haqa.store import RunRecord, Store


def _usable(run: RunRecord) -> str | None:
    """Why a stored run cannot be a baseline (None: it can): it must have finished with an
    answer that met its goal, and that answer must be readable by this version of haqa."""
    if run.status != "finished" or not (run.result or {}).get("found"):
        return f"that run has no answer that met its goal (status {run.status})"
    try:
        RunResult.model_validate(run.result)
    except ValidationError:
        return "its stored answer cannot be read by this version of haqa"
    return None


def _passed_its_gate(run: RunRecord) -> bool:
    return ((run.result or {}).get("regression") or {}).get("passed") is not False


def _speed_model(run: RunRecord) -> str | None:
    return (run.config or {}).get("speed_model") or None


def resolve_baseline(store: Store, cfg: RunConfig, fingerprint: str) -> RunConfig:
    """``cfg`` with ``baseline_run`` set (None: ``latest`` found no run to compare with).

    ``latest`` skips a run whose own gate failed (exit 5): a retried pipeline must not pass by
    comparing with the regression it just reported. A baseline must have measured speed on the
    same model as this run (a run with ``--speed-model`` measured another model's speed)."""
    cfg.regression_limits()  # --max-regression without --baseline: one line, now
    if cfg.baseline is None or cfg.baseline_run is not None:
        return cfg
    speed = cfg.speed_model or None
    if cfg.baseline == "latest":
        latest = next(
            (
                r
                for r in store.list_runs()
                if r.model == cfg.model
                and r.hardware_fingerprint == fingerprint
                and _speed_model(r) == speed
                and _usable(r) is None
                and _passed_its_gate(r)
            ),
            None,
        )
        return cfg.model_copy(update={"baseline_run": latest.run_id if latest else None})
    run = store.get_run(cfg.baseline)  # an unknown id: one line naming `haqa runs`
    why = _usable(run)
    if why is None and run.hardware_fingerprint != fingerprint:
        why = (
            f"it was measured on another machine (hardware fingerprint "
            f"{run.hardware_fingerprint}; this one is {fingerprint}): figures compare only on "
            "the same hardware"
        )
    if why is None and _speed_model(run) != speed:
        why = (
            f"it measured speed on {_speed_model(run) or 'its own model'}, this run on "
            f"{speed or 'its own model'}"
        )
    if why is not None:
        raise HaqaError(f"--baseline {run.run_id}: {why}; pick another run with `haqa runs`")
    return cfg.model_copy(update={"baseline_run": run.run_id})
