"""Loading configuration: TOML file, then environment, then CLI flags (each overriding the last).

Precedence follows what users of every CLI expect: a flag typed now beats ``HAQA_*`` variables in
the shell, which beat the project's TOML file, which beats the built-in defaults. Unknown keys and
out-of-range values are ``HaqaError``s naming the key, its source and what is allowed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from haqa.errors import HaqaError

M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "HAQA_"


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML file as a dict; a missing or malformed file is a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise HaqaError(f"config file {p} does not exist: pass --config with a TOML file")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise HaqaError(f"config file {p} is not valid TOML: {exc}") from None


def env_overrides(section: str, model: type[BaseModel]) -> dict[str, Any]:
    """``HAQA_<SECTION>__<FIELD>`` variables for the fields of ``model`` (values parsed as TOML
    scalars, so ``HAQA_FINETUNE__LEARNING_RATE=1e-3`` is a float and ``...=true`` a bool)."""
    prefix = f"{ENV_PREFIX}{section.upper()}__"
    out: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :].lower()
        if name not in model.model_fields:
            raise HaqaError(
                f"environment variable {key} names no {section} setting: use one of "
                + ", ".join(f"{prefix}{f.upper()}" for f in model.model_fields)
            )
        out[name] = _parse_scalar(raw)
    return out


def _parse_scalar(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def build(
    model: type[M],
    *layers: Mapping[str, Any] | None,
    source: str = "config",
) -> M:
    """Validate ``model`` from layered dicts, later layers overriding earlier ones."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer:
            merged.update({k: v for k, v in layer.items() if v is not None})
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        raise HaqaError(f"{source}: {validation_message(exc)}") from None


def validation_message(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line: ``lora_r = 0: must be >= 1``."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}': remove it or fix its spelling"
    if err["type"] == "missing":
        return f"missing required key '{where}'"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = msg.replace("Input should be", "must be")
    value = err.get("input")
    shown = f" = {value!r}" if not isinstance(value, dict | list) else ""
    return f"'{where}'{shown}: {msg}"
