"""Multiple-choice tasks: the JSONL format haqa reads, for the zoo's tasks and a user's own.

One JSON object per line::

    {"question": "12 + 7 =", "choices": ["19", "18", "21", "9"], "answer": 0}

``question`` is the context, ``choices`` the candidate continuations (at least two), ``answer`` the
index of the right one. Optional: ``id`` and ``kind`` (a task family, reported separately). Each
choice is scored as a continuation of ``question`` followed by one space, the way
lm-evaluation-harness scores multiple choice (``target_delimiter=" "``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from haqa.config import validation_message
from haqa.errors import HaqaError


class MCExample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    question: str
    choices: tuple[str, ...] = Field(min_length=2)
    answer: int = Field(ge=0)
    id: str | None = None
    kind: str | None = None

    @model_validator(mode="after")
    def _check(self) -> MCExample:
        if self.answer >= len(self.choices):
            raise ValueError(
                f"answer index {self.answer} is out of range for {len(self.choices)} choices"
            )
        return self


def load_jsonl(path: str | os.PathLike[str], *, limit: int | None = None) -> list[MCExample]:
    """Examples from a JSONL file; the first bad line is a one-line error naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise HaqaError(f"task file {p} does not exist: pass a JSONL file of multiple-choice items")
    examples: list[MCExample] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HaqaError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise HaqaError(f"{p}:{lineno}: each line must be a JSON object")
            try:
                examples.append(MCExample.model_validate(raw))
            except ValidationError as exc:
                raise HaqaError(f"{p}:{lineno}: {validation_message(exc)}") from None
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise HaqaError(f"task file {p} has no examples")
    return examples


def write_jsonl(path: str | os.PathLike[str], examples: list[MCExample]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(ex.model_dump_json(exclude_none=True) + "\n")
