"""English prose for perplexity and KL divergence on ``zoo:smollm2-135m``, with no download.

Source: the paragraphs of the Python documentation that CPython ships as
``pydoc_data.topics`` (the Language Reference and Library topics that ``help("assignment")``
shows), under the Python Software Foundation License Version 2 (PSF-2.0). Every Python haqa runs
on has them, so the text is there wherever the model is, offline; haqa ships no copy, it extracts
one into the zoo folder on the user's machine.

Prose only: a paragraph (a block between blank lines, its lines joined) is kept when it ends a
sentence, has at least 15 words, is almost only letters, spaces and sentence punctuation, and holds
no ``>>>`` session or ``::=`` grammar rule; code examples, grammar productions, tables and headings
fail those tests. reStructuredText emphasis (``*word*``) is unmarked and whitespace folded. A
paragraph that occurs in several topics is kept once.

The split is by topic, fixed by a hash of the topic's name: ``eval.txt`` (25.6k tokens of this
model's tokenizer on Python 3.11.7) is held out for measurements only, ``calib.txt`` (22.4k) is
for calibration (importance matrices); no paragraph is in both. Each file holds paragraphs
separated by a blank line. The topics differ between Python versions, so the build records the
version and the files' digests in ``haqa-zoo.json``; compare perplexities measured on one build.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any

SOURCE = "pydoc_data.topics (CPython documentation)"
LICENSE = "Python Software Foundation License Version 2"
EVAL_FILE = "eval.txt"
CALIB_FILE = "calib.txt"
MIN_WORDS = 15
MIN_PROSE_SHARE = 0.93  # share of letters, spaces and sentence punctuation in a kept paragraph
_UNDERLINE = set("*=-~^")
_PROSE_CHARS = set(" ,.;'’“”\"()-")


def _unmark(paragraph: str) -> str:
    paragraph = re.sub(r"\*\*([^*]+)\*\*", r"\1", paragraph)
    paragraph = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1", paragraph)
    return " ".join(paragraph.split())


def prose_paragraphs(topic_text: str) -> list[str]:
    """The prose paragraphs of one topic's text, each on one line."""
    out = []
    for block in re.split(r"\n[ \t]*\n", topic_text):
        lines = block.split("\n")
        if not block.strip():
            continue
        if len(lines) >= 2 and lines[-1].strip() and set(lines[-1].strip()) <= _UNDERLINE:
            continue  # a heading
        text = " ".join(line.strip() for line in lines)
        if text.startswith(("* ", "- ")):
            text = text[2:]
        if ">>>" in text or "::=" in text:
            continue
        text = _unmark(text)
        if len(text.split()) < MIN_WORDS or not text.endswith("."):
            continue
        if sum(c.isalpha() or c in _PROSE_CHARS for c in text) < MIN_PROSE_SHARE * len(text):
            continue
        out.append(text)
    return out


def _is_eval_topic(topic: str) -> bool:
    return hashlib.sha256(topic.encode()).digest()[0] % 2 == 0


def splits() -> tuple[list[str], list[str]]:
    """``(eval, calib)`` paragraphs, in topic order, disjoint."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    held_out: list[str] = []
    calib: list[str] = []
    for topic in sorted(topics):
        dest = held_out if _is_eval_topic(topic) else calib
        for paragraph in prose_paragraphs(topics[topic]):
            if paragraph not in seen:
                seen.add(paragraph)
                dest.append(paragraph)
    return held_out, calib


def write_texts(dest: Path) -> dict[str, Any]:
    """``dest/eval.txt`` and ``dest/calib.txt``; returns what the metadata records of them."""
    dest.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "source": SOURCE,
        "license": LICENSE,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
    }
    for name, paragraphs in zip((EVAL_FILE, CALIB_FILE), splits(), strict=True):
        data = ("\n\n".join(paragraphs) + "\n").encode("utf-8")
        (dest / name).write_bytes(data)
        info[name] = {
            "paragraphs": len(paragraphs),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return info
