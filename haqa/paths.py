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


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or none: into a temporary file beside it, then renamed over it, so a
    run killed while writing leaves the previous file (or no file), never half a document."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a report from a CI job's other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
