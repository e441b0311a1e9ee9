"""Session fixtures for the tiny zoo model (imported by ``tests/conftest.py``), and the 200M
speed model built once per version of its shapes.

The tiny model takes about two minutes to build, so a test session builds it once, into pytest's
cache folder under a key that hashes the zoo's source files: a later session reuses it until the
zoo's code changes. The session's ``HAQA_HOME`` (``session_home`` in conftest) gets a ``zoo/tiny``
that points at that build.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import haqa.zoo
from haqa.zoo import bench_shapes


def _zoo_source_key() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(haqa.zoo.__file__).parent.glob("*.py")):
        if path.name == "bench_shapes.py":
            continue
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_build(request: pytest.FixtureRequest) -> Path:
    """The tiny model folder, built once per version of the zoo's code."""
    from haqa.zoo.build import build_tiny

    cache_root = Path(request.config.cache.mkdir(f"haqa-zoo-{_zoo_source_key()}"))
    dest = cache_root / "tiny"
    if not (dest / "config.json").is_file():
        build_tiny(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_home(tiny_build: Path, session_home: Path) -> Path:
    """The session's ``HAQA_HOME`` (conftest's ``session_home``) with the tiny model in its zoo:
    a link to the cached build, unless that home already holds one (``HAQA_TEST_HOME``)."""
    link = session_home / "zoo" / "tiny"
    if not (link / "config.json").is_file():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()  # a link to a build of older zoo code
        link.symlink_to(tiny_build, target_is_directory=True)
    return session_home


@pytest.fixture()
def tiny_model(tiny_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model's folder; ``HAQA_HOME`` points at the session home for this test."""
    monkeypatch.setenv("HAQA_HOME", str(tiny_home))
    return tiny_home / "zoo" / "tiny"


def bench_200m_gguf(request: pytest.FixtureRequest, tokenizer_dir: Path) -> Path:
    """bench-200m built once per version of bench_shapes.py (in pytest's cache)."""
    key = hashlib.sha256(Path(bench_shapes.__file__).read_bytes()).hexdigest()[:12]
    root = Path(request.config.cache.mkdir(f"haqa-bench-200m-{key}"))
    return bench_shapes.build("bench-200m", root / "bench-200m", tokenizer_dir)
