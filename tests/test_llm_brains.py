"""The LLM brains with a real model, offline: SmolLM2-135M-Instruct (the zoo's F16 GGUF) as the
local grammar-constrained ``llamacpp`` brain, and behind a real OpenAI-compatible server
(``python -m llama_cpp.server``) for the ``openai`` brain; an endpoint that fails (500, silence,
death) is survived. Every run answers its deploy trials from the session's recorded tiny grid, so
the time goes to the model, not to benchmarks.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from support.llm_stub import die, http_error, serve, stall, tool_call

from haqa.agents.brains.base import DecisionContext, TrialView
from haqa.agents.routing import Budgets
from haqa.cli import main
from haqa.goal import Goal
from haqa.graph.config import RunConfig
from haqa.graph.run import start_run
from haqa.space import SearchSpace, deploy_space
from haqa.store import MessageRecord, Store
from haqa.zoo.smollm2 import Files

pytestmark = pytest.mark.slow


def _tabular(
    grid: tuple[Path, str], tmp_path: Path, **overrides: object
) -> tuple[Store, RunConfig]:
    """A copy of the grid's store and a tabular run configuration on it."""
    db, grid_id = grid
    copy = tmp_path / "haqa.duckdb"
    copy.write_bytes(db.read_bytes())
    base: dict[str, object] = {
        "model": "zoo:tiny",
        "tabular": grid_id,
        "budgets": Budgets(finetune_trials=0, deploy_trials=3, patience=10),
    }
    return Store(copy), RunConfig(**{**base, **overrides})


def _tuner(store: Store, run_id: str) -> list[MessageRecord]:
    return [m for m in store.list_messages(run_id) if m.agent == "tuner"]


def _decided_by_llm(messages: list[MessageRecord]) -> int:
    """Decisions that followed an LLM call with no fallback in between."""
    count, llm_answered = 0, False
    for m in messages:
        if m.role == "llm_call" and not (m.tool_args or {}).get("error"):
            llm_answered = True
        elif m.tool_name == "fallback" or m.role == "invalid":
            llm_answered = False
        elif m.role == "decision":
            count += llm_answered
            llm_answered = False
    return count


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def llama_server(smol: Files) -> Iterator[str]:
    """``python -m llama_cpp.server`` on the zoo model, loopback only; stopped by its pid."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(smol.f16_gguf),
         "--chat_format", "chatml-function-calling", "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "8192"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("llama_cpp.server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait()


def test_openai_brain_drives_a_run_through_a_real_llama_cpp_server(
    llama_server: str, tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    store, cfg = _tabular(
        tiny_grid, tmp_path, brain="openai", llm_base_url=llama_server, llm_model="smollm2",
        budgets=Budgets(finetune_trials=0, deploy_trials=2, patience=10, max_invalid_in_row=3),
        llm_timeout_s=300,
    )  # fmt: skip
    run_id, result = start_run(store, cfg)
    assert result is not None and result.found
    messages = _tuner(store, run_id)
    calls = [m for m in messages if m.role == "llm_call"]
    # Real tool calls from the real model: the decisions came from the LLM, not the fallback.
    assert any("propose_trial(" in str((m.tool_args or {}).get("tool_call")) for m in calls)
    assert _decided_by_llm(messages) >= 1
    assert not any(m.tool_name == "fallback" for m in messages)


def test_a_failing_endpoint_falls_back_and_the_run_finishes(
    tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    script = [
        tool_call("propose_trial", {"config": {"quant_type": "Q8_0"}}),
        http_error(500, "internal server error"),
        stall(5.0),
        die(),
    ]
    with serve(script) as stub:
        store, cfg = _tabular(
            tiny_grid, tmp_path, brain="openai", llm_base_url=stub.url, llm_model="stub",
            budgets=Budgets(finetune_trials=0, deploy_trials=4, patience=10),
            llm_timeout_s=1.0,
        )  # fmt: skip
        run_id, result = start_run(store, cfg)
    assert result is not None and result.found
    assert store.get_run(run_id).status == "finished"
    messages = _tuner(store, run_id)
    fallbacks = [m.content for m in messages if m.tool_name == "fallback"]
    assert len(fallbacks) == 3, fallbacks
    assert "500" in fallbacks[0] or "internal server error" in fallbacks[0]
    assert "timed out" in fallbacks[1]
    assert "failed" in fallbacks[2]  # the connection dropped, then refused
    assert _decided_by_llm(messages) == 1
    # A failed call is not an invalid proposal: the model said nothing.
    assert result.invalid_proposals == 0
    assert len([t for t in store.list_trials(run_id, stage="deploy") if t.is_search]) == 4


def test_local_llm_brains_propose_only_valid_configurations_and_compare_counts_them(
    smol: Files, tiny_grid: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``haqa compare`` with the grammar-constrained llamacpp brain and the hybrid brain on the
    real model: every proposal valid, each LLM call readable in the trace, the hybrid's shares
    counted, and the cost columns printed."""
    db, grid_id = tiny_grid
    out = tmp_path / "cmp"
    code = main(
        ["compare", "--db", str(db), "--tabular", grid_id, "--brains", "tpe,llamacpp,hybrid",
         "--seeds", "1", "--budget", "2", "--out", str(out), "--llm-gguf", str(smol.f16_gguf)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "hybrid" in printed and "llamacpp" in printed
    result = json.loads((out / "compare.json").read_text())
    scores = {s["brain"]: s for s in result["scores"]}
    assert scores["tpe"]["tokens_per_decision"] is None and scores["tpe"]["llm_share"] is None
    for brain in ("llamacpp", "hybrid"):
        assert scores[brain]["valid_rate"] == 1.0 and scores[brain]["tokens_per_decision"] > 0
    runs = Store(out / "compare.duckdb")
    local = _tuner(runs, result["run_ids"]["llamacpp"][0])
    calls = [m for m in local if m.role == "llm_call"]
    assert len(calls) == 2 and _decided_by_llm(local) == 2
    args = calls[0].tool_args or {}
    assert args["prompt_tokens"] > 0 and args["latency_s"] > 0
    assert json.loads((calls[0].tool_result or {})["answer"])["option"] >= 1
    # Distinct configurations: the grammar offers only untried ones.
    searched = [
        json.dumps(t.search_config, sort_keys=True)
        for t in runs.list_trials(result["run_ids"]["llamacpp"][0], stage="deploy")
        if t.is_search
    ]
    assert len(searched) == len(set(searched)) == 2
    # Every hybrid decision was chosen by one of the two, and the trace says which.
    hybrid = _tuner(runs, result["run_ids"]["hybrid"][0])
    choices = [m for m in hybrid if m.tool_name == "hybrid_choice"]
    assert len(choices) == 2
    assert {str((m.tool_args or {})["source"]) for m in choices} <= {"llm", "optimizer"}
    llm_chose = sum((m.tool_args or {})["source"] == "llm" for m in choices)
    assert scores["hybrid"]["llm_share"] == llm_chose / 2


@pytest.mark.parametrize("stage", ["finetune", "deploy"])
def test_the_grammar_offers_only_values_the_space_allows(stage: str) -> None:
    """Each value the schema admits passes the space's own check, and llama.cpp compiles it."""
    from llama_cpp.llama_grammar import LlamaGrammar

    from haqa.agents.brains.base import DecisionContext
    from haqa.agents.brains.constrained import decision_question, knob_values, schema_text
    from haqa.goal import Goal
    from haqa.space import deploy_space, finetune_space

    space = finetune_space() if stage == "finetune" else deploy_space(8)
    for knob in space.knobs:
        if knob.kind != "bool":
            assert all(knob.check(v) == v for v in knob_values(knob)), knob.name
    ctx = DecisionContext(
        run_id="r", agent="tuner", stage=stage, space=space, goal=Goal.parse("decode"),
        static_prompt="s", dynamic_prompt="d", history=[], defaults=space.defaults(),
        budget_left=3,
    )  # fmt: skip
    question = decision_question(ctx)
    assert question.options is None  # too many configurations to list: a whole config
    assert question.schema["properties"]["action"]["enum"] == ["trial"]  # nothing feasible yet
    LlamaGrammar.from_json_schema(schema_text(question.schema), verbose=False)


def _steps(space: SearchSpace, n: int) -> list[DecisionContext]:
    """The contexts of ``n`` successive tuner steps, each after one more finished trial, with
    dynamic prompts as the search step writes them."""
    from haqa.agents.search_step import dynamic_prompt

    defaults = space.defaults()
    out, views = [], []
    for step in range(n):
        feedback = [f"trial {v.trial_id} finished: decode 80.0 t/s" for v in views[-3:]]
        prompt = dynamic_prompt(
            cast(Any, None), views=list(views), knobs=space.names, budget_left=n - step,
            feedback=feedback, extra="Reference accuracy: 0.665; allowed drop 0.020.",
        )  # fmt: skip
        out.append(
            DecisionContext(
                run_id="r",
                agent="tuner",
                stage="deploy",
                space=space,
                goal=Goal.parse("decode"),
                static_prompt="static",
                dynamic_prompt=prompt,
                history=list(views),
                defaults=defaults,
                budget_left=n - step,
                feedback=feedback,
            )
        )
        config = {**defaults, "quant_type": ["Q4_0", "Q8_0", "F16"][step % 3]}
        config["flash_attn"] = step % 2 == 0
        views.append(
            TrialView(
                trial_id=step + 1,
                stage="deploy",
                config=config,
                status="ok",
                accuracy=0.66,
                decode_tps=80.0,
                prefill_tps=900.0,
                objective=80.0 + step,
                feasible=True,
            )
        )
    return out


def _small_space() -> SearchSpace:
    """Twelve configurations: three quant types, imatrix and flash attention on or off."""
    space = deploy_space(2)
    fixed = {
        k.name: [k.default]
        for k in space.knobs
        if k.kind == "categorical" and k.name not in ("quant_type", "flash_attn")
    }
    return space.restrict(quant_type=["Q4_0", "Q8_0", "F16"], **fixed)


@pytest.mark.parametrize("small", [True, False])
def test_each_step_prompt_starts_with_the_previous_one_so_llama_cpp_reuses_it(
    small: bool,
) -> None:
    """The local model's prompt is laid out for llama.cpp's prefix cache: everything but the
    tail (trial count, budget, feedback) of one step is the start of the next step's prompt,
    the history table is not sent twice, and only the latest feedback is sent."""
    from haqa.agents.brains.constrained import decision_question

    space = _small_space() if small else deploy_space(2)
    users = [decision_question(ctx).messages[1]["content"] for ctx in _steps(space, 4)]
    for before, after in itertools.pairwise(users[1:]):
        stable = before[: before.index("Trials so far (")].rstrip("\n")
        assert after.startswith(stable) and "| objective |" in stable
        assert after.count("| objective |") == 1 and after.count("finished: decode") == 1
        assert "Latest feedback:\n- trial " in after
    if small:  # the whole catalogue is listed every step, in the same order
        assert all("12: quant_type=F16, imatrix=True, flash_attn=True" in u for u in users)


def test_the_catalogue_admits_only_untried_configurations() -> None:
    from haqa.agents.brains.constrained import decision_question, parse_decision, picked_option
    from haqa.agents.brains.react import InvalidAnswer

    ctx = _steps(_small_space(), 3)[-1]  # two trials: Q4_0 with flash, Q8_0 without
    question = decision_question(ctx)
    assert question.options is not None and len(question.options) == 12
    assert question.allowed is not None and len(question.allowed) == 10
    assert question.schema["properties"]["option"]["enum"] == list(question.allowed)
    tried = next(i for i in range(1, 13) if i not in question.allowed)
    with pytest.raises(InvalidAnswer, match="tried already"):
        picked_option(json.dumps({"option": tried, "thought": ""}), question)
    pick = question.allowed[0]
    proposal = parse_decision(json.dumps({"option": pick, "thought": "x"}), question, ctx.space)
    assert proposal.config is not None
    assert proposal.config["quant_type"] == question.options[pick - 1]["quant_type"]


def test_the_local_model_writes_valid_answers_in_few_forward_passes(smol: Files) -> None:
    """The real model answers a whole deployment configuration and a catalogue pick: each in
    the space, compact JSON, far fewer forward passes than tokens, and a second step reuses
    the first step's prompt from the cache."""
    from haqa.agents.brains.constrained import decision_question, parse_decision
    from haqa.agents.brains.llamacpp_brain import LocalModel
    from haqa.schemas import DeployConfig

    model = LocalModel(smol.f16_gguf, seed=3)
    for small in (False, True):
        space, calls = _small_space() if small else deploy_space(2), []
        for ctx in _steps(space, 3)[1:]:
            question = decision_question(ctx)
            call = model.answer(question.messages, question.schema, brain="t", purpose="t")
            proposal = parse_decision(call.answer, question, ctx.space)
            if proposal.action == "trial":
                assert proposal.config is not None
                DeployConfig.model_validate({**ctx.defaults, **proposal.config})
                assert ctx.space.validate_config(proposal.config)
            assert call.answer == json.dumps(json.loads(call.answer), separators=(",", ":"))
            assert call.forward_passes is not None and call.completion_tokens is not None
            calls.append(call)
        if not small:  # a whole configuration: its keys and punctuation cost no passes
            assert (calls[0].forward_passes or 0) * 2 < (calls[0].completion_tokens or 0)
        assert (calls[1].prompt_cached or 0) > (calls[0].prompt_tokens or 0) // 2
        assert calls[1].threads is not None and calls[1].threads >= 1


def test_a_whole_configuration_keeps_the_constraints_between_knobs() -> None:
    """Decoded knob by knob, a configuration must not break the checks that tie knobs together
    (n_ubatch <= n_batch; a quantized V cache needs flash attention): each knob is offered only
    the values still possible after the ones before it, so any sequence of choices is valid."""
    import random

    from haqa.agents.brains.constrained import decision_question
    from haqa.schemas import DeployConfig

    ctx = _steps(deploy_space(2), 2)[-1]
    question = decision_question(ctx)
    assert question.allow is not None
    knobs = question.schema["properties"]["config"]["properties"]
    assert question.allow({"n_batch": 128}, "n_ubatch", [64, 128, 256, 512]) == [64, 128]
    assert question.allow({"flash_attn": False}, "type_v", ["f16", "q8_0"]) == ["f16"]
    rng = random.Random(0)
    for _ in range(200):  # random choices among the allowed values: always a valid config
        chosen: dict[str, Any] = {}
        for name, schema in knobs.items():
            values = list(schema["enum"]) if "enum" in schema else [True, False]
            chosen[name] = rng.choice(question.allow(chosen, name, values))
        DeployConfig.model_validate({**ctx.defaults, **chosen})
