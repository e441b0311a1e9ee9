"""Shared fixtures. The cache home is one per test session, so tests never touch a user's cache;
the tiny zoo model is built once per session (or reused from HAQA_TEST_HOME when set, which CI
does not set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.grid import tiny_grid  # noqa: F401
from support.smollm2 import smol, smollm2_build  # noqa: F401
from support.zoo import tiny_build, tiny_home, tiny_model  # noqa: F401

from haqa.store import Store


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HAQA_HOME for the whole session: a reusable one when HAQA_TEST_HOME is set (local runs),
    else a fresh temporary folder."""
    reuse = os.environ.get("HAQA_TEST_HOME")
    home = Path(reuse) if reuse else tmp_path_factory.mktemp("haqa-home")
    old = os.environ.get("HAQA_HOME")
    os.environ["HAQA_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("HAQA_HOME", None)
    else:
        os.environ["HAQA_HOME"] = old


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "haqa.duckdb"


@pytest.fixture()
def store(db_path: Path) -> Store:
    return Store(db_path)
