"""Where haqa keeps its files: the cache home (zoo models, artifacts) and the store.

``HAQA_HOME`` overrides the cache home; by default it is the user's cache directory, so a model
built once by ``haqa zoo build`` is reused by every project on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB_NAME = "haqa.duckdb"


def haqa_home() -> Path:
    """The cache home: ``$HAQA_HOME`` or ``<user cache dir>/haqa``."""
    env = os.environ.get("HAQA_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("haqa", appauthor=False))


def zoo_dir() -> Path:
    """Models built by the zoo, one folder per zoo name."""
    return haqa_home() / "zoo"


def artifacts_dir() -> Path:
    """Content-addressed artifacts (adapters, GGUF files): never produced twice."""
    return haqa_home() / "artifacts"


def default_db_path() -> Path:
    """The store: ``haqa.duckdb`` in the working directory (one store per project directory)."""
    return Path.cwd() / DEFAULT_DB_NAME


def replace_folder(work: Path, dest: Path) -> None:
    """Move a finished build folder into place; an old folder is moved aside first, then
    removed, so ``dest`` is never half-written (a folder that exists is complete)."""
    import secrets
    import shutil

    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{secrets.token_hex(3)}"
        dest.rename(old)
    work.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
