"""What a user names as a model: ``zoo:<name>``, a Hugging Face folder, or a GGUF file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from haqa.errors import HaqaError

GGUF_MAGIC = b"GGUF"


class ModelRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    spec: str
    kind: Literal["hf", "gguf"]
    path: Path


def is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def check_hf_causal_lm(path: Path) -> None:
    """A folder with a config.json naming a ``*ForCausalLM`` architecture, or a HaqaError."""
    config = path / "config.json"
    if not config.is_file():
        raise HaqaError(
            f"{path} is not a Hugging Face model folder (no config.json): pass a causal LM "
            "folder, a .gguf file or zoo:tiny"
        )
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (json.JSONDecodeError, AttributeError):
        raise HaqaError(f"{config} is not valid JSON: fix or replace the model folder") from None
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise HaqaError(
            f"{path} is not a causal language model (architectures: {archs or 'none'}): "
            "pass a *ForCausalLM model"
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise HaqaError(f"{path} has no weights (*.safetensors or *.bin): finish the download")


def resolve_model(spec: str, *, build_zoo: bool = True) -> ModelRef:
    """Resolve ``zoo:NAME`` (building it once if needed), a HF folder, or a GGUF file."""
    if spec.startswith("zoo:"):
        from haqa import zoo

        name = spec[len("zoo:") :]
        path = zoo.ensure(name) if build_zoo else zoo.zoo_path(name)
        return resolve_model(str(path), build_zoo=False).model_copy(update={"spec": spec})
    path = Path(spec).expanduser()
    if not path.exists():
        raise HaqaError(
            f"model {spec} does not exist: pass a model folder, a .gguf file or zoo:tiny"
        )
    if path.is_dir():
        check_hf_causal_lm(path)
        return ModelRef(spec=spec, kind="hf", path=path.resolve())
    if not is_gguf(path):
        raise HaqaError(
            f"{spec} is not a GGUF file (bad magic): pass a .gguf file or a model folder"
        )
    return ModelRef(spec=spec, kind="gguf", path=path.resolve())
