"""Recorded grids ("tabular benchmarks"): every deploy configuration of a grid measured once on a
model and machine, repeats included, so brains can be compared over many seeds in seconds."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from haqa.errors import HaqaError
from haqa.store.records import _dump, _load, utcnow

GridStatus = Literal["recording", "complete"]


class GridRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    grid_id: str
    created_at: datetime
    model: str
    speed_model: str | None
    hardware_fingerprint: str
    hardware: dict[str, Any] | None
    space: dict[str, list[Any]]
    settings: dict[str, Any]
    status: GridStatus


class GridPoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    grid_id: str
    config_key: str
    repeat: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    duration_s: float


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class _Connects(Protocol):
    path: Any

    def _connect(self, *, read_only: bool = False) -> AbstractContextManager[Any]: ...


class GridMixin:
    """The grid part of the Store's API (mixed into ``Store``)."""

    def create_grid(
        self: _Connects,
        *,
        model: str,
        speed_model: str | None,
        hardware_fingerprint: str,
        hardware: dict[str, Any] | None,
        space: dict[str, list[Any]],
        settings: dict[str, Any],
    ) -> GridRecord:
        record = GridRecord(
            grid_id="grid-" + utcnow().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2),
            created_at=utcnow(),
            model=model,
            speed_model=speed_model,
            hardware_fingerprint=hardware_fingerprint,
            hardware=hardware,
            space=space,
            settings=settings,
            status="recording",
        )
        with self._connect() as con:
            con.execute(
                "INSERT INTO grids VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    record.grid_id,
                    record.created_at,
                    record.model,
                    record.speed_model,
                    record.hardware_fingerprint,
                    _dump(record.hardware),
                    _dump(record.space),
                    _dump(record.settings),
                    record.status,
                ],
            )
        return record

    def add_grid_point(
        self: _Connects,
        grid_id: str,
        config: dict[str, Any],
        repeat: int,
        metrics: dict[str, Any],
        duration_s: float,
    ) -> None:
        with self._connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO grid_points VALUES (?, ?, ?, ?, ?, ?)",
                [grid_id, config_key(config), repeat, _dump(config), _dump(metrics), duration_s],
            )

    def set_grid_status(self: _Connects, grid_id: str, status: GridStatus) -> None:
        with self._connect() as con:
            con.execute("UPDATE grids SET status = ? WHERE grid_id = ?", [status, grid_id])

    def get_grid(self: _Connects, grid_id: str) -> GridRecord:
        with self._connect(read_only=True) as con:
            row = con.execute("SELECT * FROM grids WHERE grid_id = ?", [grid_id]).fetchone()
            cols = [d[0] for d in con.description]
        if row is None:
            raise HaqaError(
                f"grid {grid_id!r} is not in {self.path}: record one with `haqa grid record`"
            )
        d = dict(zip(cols, row, strict=True))
        for key in ("hardware", "space", "settings"):
            d[key] = _load(d[key])
        return GridRecord(**d)

    def list_grids(self: _Connects) -> list[GridRecord]:
        with self._connect(read_only=True) as con:
            ids = [
                r[0]
                for r in con.execute("SELECT grid_id FROM grids ORDER BY created_at").fetchall()
            ]
        return [GridMixin.get_grid(self, i) for i in ids]  # type: ignore[arg-type]

    def grid_points(self: _Connects, grid_id: str) -> list[GridPoint]:
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT * FROM grid_points WHERE grid_id = ? ORDER BY config_key, repeat",
                [grid_id],
            ).fetchall()
            cols = [d[0] for d in con.description]
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["config"] = _load(d["config"])
            d["metrics"] = _load(d["metrics"])
            out.append(GridPoint(**d))
        return out


def iter_grid_configs(space: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """The Cartesian product of the grid's knob choices, in a stable order."""
    import itertools

    names = sorted(space)
    for values in itertools.product(*(space[n] for n in names)):
        yield dict(zip(names, values, strict=True))
