"""The deployed artifact's accuracy: the fine-tuned tiny model exported to Q8_0 scores within 2
points of the HF model with its adapter on the same tasks; a deployment's accuracy is scored with
its own K/V cache types, once per weights and cache.

Q2_K is measured and printed, not asserted: on the tiny model it is not visibly worse (340 test
questions, a build of 300 steps: HF+adapter 0.650, Q8_0 0.647, Q4_K_M 0.653, Q3_K_M 0.656, Q2_K
0.671). The model's learned function shrugs off weight error of Q2_K's size: Gaussian noise of 0.3x
each block matrix's std costs it 1.5 points, and only noise as large as the weights costs 11
(``bench/quant_accuracy.py`` prints both, and docs/benchmarks.md lists what was tried to make it
sensitive, ten times the training among it). Q2_K is visibly the worst type by its next-token
distributions, not by its answers: ``tests/test_gguf_loglik.py`` asserts its KL divergence from
F16 is over ten times Q8_0's. A zoo model whose accuracy 2-bit weights break is the open item."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa import zoo
from haqa.schemas import DeployConfig, FinetuneConfig, KvCacheSettings
from haqa.tools import evaluate as evaluate_module
from haqa.tools.evaluate import Args as EvalArgs
from haqa.tools.evaluate import Result as EvalResult
from haqa.tools.evaluate import evaluate
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf
from haqa.tools.run_qlora import Args as QloraArgs
from haqa.tools.run_qlora import run_qlora
from haqa.trials.toolbox import LiveToolbox, ToolboxSettings

pytestmark = pytest.mark.slow


def test_q8_0_keeps_the_hf_accuracy(tiny_model: Path) -> None:
    adapter = run_qlora(
        QloraArgs(
            model=tiny_model,
            config=FinetuneConfig(learning_rate=5e-3, max_steps=60),
            train_files=zoo.task_files("tiny", "train"),
        )
    ).adapter_path
    tests = zoo.task_files("tiny", "test")
    hf = evaluate(EvalArgs(model=tiny_model, adapter=adapter, task_files=tests)).accuracy
    scores = {}
    for quant in ("Q8_0", "Q2_K"):
        gguf = export_gguf(ExportArgs(model=tiny_model, adapter=adapter, quant_type=quant))
        scores[quant] = evaluate(EvalArgs(model=gguf.gguf_path, task_files=tests)).accuracy
    print(f"HF+adapter {hf:.3f}, Q8_0 {scores['Q8_0']:.3f}, Q2_K {scores['Q2_K']:.3f}")
    assert abs(scores["Q8_0"] - hf) <= 0.02  # Q2_K: printed above, see the docstring


def test_a_deployment_is_scored_with_its_kv_cache_once(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tuner varies type_k/type_v; a q4_0 cache changes the answers (the fine-tuned tiny
    model's Q4_K_M: 0.630 with an f16 cache, 0.618 with a q4_0 K cache, 560 questions), so its
    accuracy is measured with that cache, and only once: other threads or batches reuse it, and
    so does a resumed run (the disk cache)."""
    splits = {s: zoo.task_files("tiny", s) for s in ("train", "validation", "test")}
    files = splits["validation"]
    settings = ToolboxSettings(
        model=tiny_model,
        train_files=splits["train"],
        validation_files=files,
        test_files=splits["test"],
        eval_limit=30,
        n_prompt=16,
        n_gen=4,
        repetitions=1,
    )
    f16 = DeployConfig(quant_type="Q4_K_M", n_ctx=512)
    q4 = f16.model_copy(update={"type_k": "q4_0", "type_v": "q4_0", "flash_attn": True})
    q4_other_batch = q4.model_copy(update={"n_ubatch": 256})
    q4_cache = KvCacheSettings(type_k="q4_0", type_v="q4_0", flash_attn=True)
    gguf = export_gguf(ExportArgs(model=tiny_model, quant_type="Q4_K_M")).gguf_path
    scored: list[KvCacheSettings | None] = []  # the K/V cache of every evaluation the toolbox runs

    def noting_the_cache(args: EvalArgs) -> EvalResult:
        scored.append(args.kv_cache)
        return evaluate(args)

    monkeypatch.setattr(evaluate_module, "evaluate", noting_the_cache)
    box = LiveToolbox(settings)
    # An f16 cache keeps the evaluation key it had before cache types were part of it.
    assert box._eval_cache_path(gguf, files) == box._eval_cache_path(gguf, files, KvCacheSettings())
    for kv in (KvCacheSettings(), q4_cache):
        box._eval_cache_path(gguf, files, kv).unlink(missing_ok=True)  # measured afresh here
    accuracy = [box.deploy(c, None).accuracy for c in (f16, q4, q4_other_batch)]
    assert scored == [KvCacheSettings(), q4_cache]
    alone = evaluate(EvalArgs(model=gguf, task_files=files, limit=30, kv_cache=q4_cache))
    assert accuracy[1] == accuracy[2] == alone.accuracy
    scored.clear()
    assert LiveToolbox(settings).deploy(q4, None).accuracy == accuracy[1]  # a resumed run
    assert scored == []


def _tiny_weights_box(tiny_model: Path) -> LiveToolbox:
    """A toolbox on the tiny model sized for trials about the weights (few questions, short
    benchmarks, a two-chunk importance matrix)."""
    splits = {s: zoo.task_files("tiny", s) for s in ("train", "validation", "test")}
    settings = ToolboxSettings(
        model=tiny_model,
        train_files=splits["train"],
        validation_files=splits["validation"],
        test_files=splits["test"],
        eval_limit=10,
        n_prompt=16,
        n_gen=4,
        repetitions=1,
        imatrix_chunks=2,
    )
    return LiveToolbox(settings)


def test_a_deploy_trial_with_a_recipe_and_an_imatrix(tiny_model: Path) -> None:
    """``recipe`` and ``imatrix`` make another file from the model's F16 GGUF: attn_v and
    ffn_down one step up (Q4_0 -> Q5_0) with an importance matrix over the training split; the
    trial records the llama.cpp command lines that make the same file by hand."""
    from haqa.tools.gguf_header import read_gguf_header

    box = _tiny_weights_box(tiny_model)
    plain = box.deploy(DeployConfig(quant_type="Q4_0", n_ctx=512), None)
    mixed_cfg = DeployConfig(quant_type="Q4_0", recipe="sensitive_up", imatrix=True, n_ctx=512)
    mixed = box.deploy(mixed_cfg, None)
    assert plain.gguf != mixed.gguf and mixed.gguf is not None
    types = {t.name: t.ggml_type for t in read_gguf_header(Path(mixed.gguf)).tensors}
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == "Q5_0"
    assert types["blk.0.attn_q.weight"] == "Q4_0"
    assert (mixed.bits_per_weight or 0) > (plain.bits_per_weight or 0)
    made = mixed.quantize_commands or []
    assert made[0].startswith("llama-imatrix -m ") and "--chunks 2" in made[0]
    assert made[1].startswith("llama-quantize --imatrix ")
    assert "--tensor-type 'attn_v\\.weight=q5_0'" in made[1] and made[1].endswith(" Q4_0")
    assert len(plain.quantize_commands or []) == 1
    assert "--imatrix" not in (plain.quantize_commands or [""])[0]


def test_a_deploy_trial_with_the_probed_recipe(tiny_model: Path) -> None:
    """``recipe=probed`` with ``target_bpw``: the toolbox probes the model's tensor sensitivity
    once, allocates the target by it, and the file it measures has the bits the memory estimate
    predicted (the header's), near the target, with every group's type on the llama-quantize
    line that makes it by hand."""
    from haqa.tools.gguf_header import read_gguf_header

    box = _tiny_weights_box(tiny_model)
    probe = box.tensor_sensitivity()
    assert probe is not None and "tensor sensitivity" in probe["summary"]
    plain = box.deploy(DeployConfig(quant_type="Q4_0", n_ctx=512), None)
    cfg = DeployConfig(quant_type="Q4_0", recipe="probed", target_bpw=6.0, n_ctx=512)
    probed = box.deploy(cfg, None)
    assert probed.gguf is not None and probed.gguf != plain.gguf
    bits = probed.bits_per_weight or 0
    assert (plain.bits_per_weight or 0) < bits <= 6.0
    estimate = box.estimate_deploy(cfg)
    on_disk = sum(t.n_bytes for t in read_gguf_header(Path(probed.gguf)).tensors)
    assert estimate["weights_bytes"] == on_disk
    # The layer group the probe ranks most sensitive per weight got more than the base type.
    layers = [g for g in probe["groups"] if g["group"] != "output"]
    top = max(layers, key=lambda g: g["kld"] / g["n_weights"])["group"]
    types = {t.name: t.ggml_type for t in read_gguf_header(Path(probed.gguf)).tensors}
    assert types[f"blk.0.{top}.weight"] != "Q4_0", (top, types)
    line = (probed.quantize_commands or [""])[-1]
    assert line.startswith("llama-quantize --tensor-type ") and line.endswith(" Q4_0")
