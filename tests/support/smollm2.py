"""Session fixtures for zoo:smollm2-135m, the real model (imported by ``tests/conftest.py``).

The build (about 50 s) runs once per version of ``haqa/zoo/smollm2``: into pytest's cache folder,
under a key that hashes those sources and the pinned package, so a later session reuses it (as
the tiny model's fixture does); the session's ``HAQA_HOME`` gets a ``zoo/smollm2-135m`` link to it.
"""

from __future__ import annotations

import hashlib
import shutil
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

import haqa.zoo.smollm2
from haqa.zoo import smollm2
from haqa.zoo.smollm2 import Files
from haqa.zoo.smollm2 import build as smol_build

NAME = smollm2.NAME


def _source_key() -> str:
    h = hashlib.sha256(f"{smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION}".encode())
    for path in sorted(Path(haqa.zoo.smollm2.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def smollm2_build(request: pytest.FixtureRequest, session_home: Path) -> Path:
    """The build's root, made once per version of the smollm2 sources (older builds, about
    640 MB each, are removed from the cache)."""
    try:
        distribution(smollm2.PACKAGE)
    except PackageNotFoundError:
        pytest.skip(f"{smollm2.PACKAGE} is not installed: {smollm2.PIP_INSTALL} (make venv does)")
    key_dir = Path(request.config.cache.mkdir(f"haqa-smollm2-{_source_key()}"))
    for old in key_dir.parent.glob("haqa-smollm2-*"):
        if old != key_dir:
            shutil.rmtree(old, ignore_errors=True)
    dest = key_dir / NAME
    if smollm2.status(dest) != "built":
        smol_build.build(dest, reuse_model=False)
    link = session_home / "zoo" / NAME
    if link.is_symlink() or not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(dest, target_is_directory=True)
    return dest


@pytest.fixture()
def smol(smollm2_build: Path, session_home: Path, monkeypatch: pytest.MonkeyPatch) -> Files:
    monkeypatch.setenv("HAQA_HOME", str(session_home))
    return Files(session_home / "zoo" / NAME)
