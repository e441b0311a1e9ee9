"""Run mypy and the import contracts on the installed layout (``haqa.tools`` is ``tools/``, …).

mypy cannot follow the editable install's import hook, so this builds a tree of symlinks that
looks like the installed package (``.typecheck/haqa/tools -> ../../tools``) and checks that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {name: name for name in ("tools", "trials", "agents", "graph", "harness", "tui")}


def main() -> int:
    tree = ROOT / ".typecheck"
    shutil.rmtree(tree, ignore_errors=True)
    pkg = tree / "haqa"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "haqa").iterdir():
        if entry.name == "__pycache__":
            continue
        (pkg / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (pkg / name).symlink_to(ROOT / folder)
    config = str(ROOT / "pyproject.toml")
    cmd = [sys.executable, "-m", "mypy", "--config-file", config, "-p", "haqa"]
    status = subprocess.call(cmd, cwd=tree)
    # import-linter reads the same tree, so the contracts see `haqa.tools` where it is installed.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    lint = [str(Path(sys.executable).with_name("lint-imports")), "--config", config]
    return status or subprocess.call(lint, cwd=tree, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
