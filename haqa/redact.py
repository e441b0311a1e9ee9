"""Secrets never reach the trace, the logs, reports or error messages: redacted at the boundary.

What counts as a secret: the values of environment variables whose names say so (``*KEY*``,
``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``), and anything shaped like an API key or a bearer token
(``sk-…``, ``Bearer …``), even if it came back from a server inside an error message.
"""

from __future__ import annotations

import os
import re
from typing import Any

REDACTED = "[REDACTED]"
_SECRET_NAMES = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)
_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9_\-\.=]{8,}|hf_[A-Za-z0-9]{16,}|"
    r"(?i:api[_-]?key)\s*[:=]\s*\S{8,})"
)
#: Shorter values are too likely to be ordinary words (a variable set to "1" or "true").
_MIN_SECRET_LEN = 8


def _env_secrets() -> list[str]:
    values = [
        v for k, v in os.environ.items() if _SECRET_NAMES.search(k) and len(v) >= _MIN_SECRET_LEN
    ]
    return sorted(set(values), key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _env_secrets():
        text = text.replace(secret, REDACTED)
    return _SHAPES.sub(REDACTED, text)


def redact_value(value: Any) -> Any:
    """Redact every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
