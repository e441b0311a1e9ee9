"""The child process of an isolated trial: ``python -m haqa.trials.worker REQ RESP``.

Reads the request (toolbox factory, settings, method, arguments), runs the method, writes the
JSON reply. A user error (``HaqaError``) and any other exception are replies; a crash is the
parent's to report from the exit status and the log.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haqa.trials.toolbox import Toolbox

# Nothing heavy above: the worker arms its death with the parent (``main``'s first line) before
# it spends seconds importing the toolbox, torch or llama.cpp.


def _jsonable(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _method(toolbox: Toolbox, name: str) -> Callable[..., Any]:
    """The measuring method of the ``Toolbox`` interface the parent asked for, by name."""
    methods: dict[str, Callable[..., Any]] = {
        "probe": toolbox.probe,
        "microbench": toolbox.microbench,
        "tensor_sensitivity": toolbox.tensor_sensitivity,
        "evaluate_base": toolbox.evaluate_base,
        "finetune": toolbox.finetune,
        "reference": toolbox.reference,
        "deploy": toolbox.deploy,
        "baseline": toolbox.baseline,
        "final_test": toolbox.final_test,
        "measure_gguf": toolbox.measure_gguf,
    }
    if name not in methods:
        raise ValueError(f"unknown toolbox method {name!r}: one of {', '.join(methods)}")
    return methods[name]


def main(argv: list[str]) -> int:
    from haqa.procs import die_with_parent

    # Dies with the run that started it; its children (the benchmark, the measurements) arm the
    # same for themselves, since a death signal is not inherited.
    die_with_parent()
    from haqa.errors import HaqaError, failure_reason
    from haqa.trials.isolation import decode_arg
    from haqa.trials.toolbox import ToolboxSettings

    request = json.loads(Path(argv[0]).read_text())
    response = Path(argv[1])
    module_name, _, class_name = request["factory"].partition(":")
    factory = getattr(importlib.import_module(module_name), class_name)
    toolbox = factory(ToolboxSettings.model_validate(request["settings"]))
    args = [decode_arg(a) for a in request["args"]]
    try:
        value = _method(toolbox, request["method"])(*args)
        reply: dict[str, Any] = {"ok": True, "value": _jsonable(value)}
    except HaqaError as exc:
        reply = {"ok": False, "user_error": True, "error": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        reply = {"ok": False, "error": failure_reason(exc)}
    response.write_text(json.dumps(reply, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
