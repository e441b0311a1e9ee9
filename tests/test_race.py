"""The final race's rule: the answer never loses to a default (or runner-up) it measured, and
noise does not flip it."""

from __future__ import annotations

from pathlib import Path

from support.instant import InstantToolbox, ScriptedBrain, drive, instant_runtime

from haqa.agents.routing import Budgets
from haqa.agents.supervisor.race import Entrant, spread, winner
from haqa.agents.supervisor.result import RunResult
from haqa.schemas import DeployConfig, RuntimeSettings, TrialMetrics
from haqa.store import Store


def _e(name: str, objective: float | None, *, meets: bool = True, rsd: float = 0.0) -> Entrant:
    return Entrant(name=name, config={"q": name}, objective=objective, meets_goal=meets, rsd=rsd)


def test_a_faster_default_that_meets_the_goal_becomes_the_answer() -> None:
    chosen = _e("chosen", 100.0)
    assert winner(chosen, [_e("default F16", 90.0), _e("default Q4_K_M", 112.0)]).name == (
        "default Q4_K_M"
    )


def test_a_faster_rival_that_misses_the_goal_never_wins() -> None:
    chosen = _e("chosen", 100.0)
    assert winner(chosen, [_e("default Q4_K_M", 150.0, meets=False)]) is chosen


def test_within_noise_the_search_choice_stands() -> None:
    chosen = _e("chosen", 100.0, rsd=0.03)
    # 5% faster, but the rounds spread 3%: inside twice the noise.
    assert winner(chosen, [_e("runner-up 1", 105.0)]) is chosen
    assert winner(chosen, [_e("runner-up 1", 107.0)]).name == "runner-up 1"
    assert winner(_e("chosen", 100.0), [_e("runner-up 1", 101.5)]).name == "chosen"


def test_a_default_that_measured_faster_wins_even_within_noise() -> None:
    """A tie the race cannot resolve goes to llama.cpp's defaults when they measured faster: the
    answer is then never reported slower than a default it was measured beside."""
    chosen = _e("chosen", 100.0, rsd=0.03)
    default = Entrant(
        name="default Q4_K_M", config={"q": "d"}, objective=100.5, meets_goal=True, default=True
    )
    assert winner(chosen, [default]) is default
    slower = default.model_copy(update={"objective": 99.0})
    assert winner(chosen, [slower]) is chosen
    assert winner(chosen, [default.model_copy(update={"meets_goal": False})]) is chosen


def test_the_fastest_of_several_faster_rivals_wins() -> None:
    chosen = _e("chosen", 100.0)
    rivals = [_e("runner-up 1", 110.0), _e("default Q4_K_M", 120.0), _e("runner-up 2", 115.0)]
    assert winner(chosen, rivals).name == "default Q4_K_M"


def test_the_same_configuration_as_a_default_is_not_a_rival() -> None:
    chosen = Entrant(name="chosen", config={"q": "Q4_K_M"}, objective=100.0, meets_goal=True)
    same = Entrant(name="default Q4_K_M", config={"q": "Q4_K_M"}, objective=130.0, meets_goal=True)
    assert winner(chosen, [same]) is chosen


def test_spread_of_rounds() -> None:
    assert spread([100.0, 110.0]) == 10.0 / 105.0
    assert spread([100.0]) == 0.0 and spread([None, 3.0]) == 0.0


class FastDefaults(InstantToolbox):
    """Every search trial decodes at 20 tok/s; llama.cpp's Q4_K_M defaults at 40 (others 5)."""

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        self.deployed.append(config.quant_type)
        return TrialMetrics(accuracy=0.5, prefill_tps=100.0, decode_tps=20.0)

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        fast = 40.0 if quant_type == "Q4_K_M" else 5.0
        return TrialMetrics(prefill_tps=90.0, decode_tps=fast, peak_mem_bytes=1 << 20)


def test_a_run_hands_over_a_faster_default_that_meets_the_goal(tmp_path: Path) -> None:
    """The search measured Q4_0 (the only type its scripted brain tried) and Q4_K_M; at the end
    llama.cpp's Q4_K_M defaults decode far faster side by side and Q4_K_M kept the accuracy
    floor during the search: the answer is the default, and it says so."""

    store = Store(tmp_path / "haqa.duckdb")
    brain = ScriptedBrain(["Q4_0", "Q4_K_M"])
    rt = instant_runtime(store, brain, Budgets(finetune_trials=0, deploy_trials=2), FastDefaults())
    drive(rt)
    result = RunResult.model_validate(store.get_run(rt.run_id).result)
    assert result.found and result.config is not None
    assert result.race_winner == "llama.cpp's defaults at Q4_K_M"
    assert result.config["quant_type"] == "Q4_K_M" and result.decode_tps == 40.0
    assert result.speedup_decode["Q4_K_M"] == 1.0
    assert any("final race" in m.content for m in store.list_messages(rt.run_id))


def test_the_answer_is_paired_with_the_trial_of_its_own_weights() -> None:
    """IQ4_NL with and without an importance matrix answer differently (on SmolLM2, 17 points
    apart): the answer's paired comparison and a default's accuracy come from the trial of the
    same weights (type, recipe, imatrix) and cache, never from another file of the same type."""
    from types import SimpleNamespace
    from typing import Any

    from haqa.agents.supervisor.result import _measured_with

    def trial(trial_id: int, correct: str, **config: Any) -> SimpleNamespace:
        metrics = SimpleNamespace(accuracy=correct.count("1") / len(correct), correct=correct)
        return SimpleNamespace(
            trial_id=trial_id, is_search=True, status="ok", config=config, metrics=metrics
        )

    trials = [
        trial(1, "0011", quant_type="IQ4_NL"),
        trial(2, "1111", quant_type="IQ4_NL", imatrix=True),
        trial(3, "0111", quant_type="IQ4_NL", recipe="sensitive_up", imatrix=True),
    ]
    rt: Any = SimpleNamespace(trials=lambda stage: trials)
    found = {
        key: _measured_with(rt, "IQ4_NL", config)
        for key, config in {
            "plain": {"quant_type": "IQ4_NL"},
            "imatrix": {"quant_type": "IQ4_NL", "recipe": "uniform", "imatrix": True},
            "mixed": {"quant_type": "IQ4_NL", "recipe": "sensitive_up", "imatrix": True},
        }.items()
    }
    assert {k: t.trial_id for k, t in found.items() if t} == {"plain": 1, "imatrix": 2, "mixed": 3}
    assert _measured_with(rt, "IQ4_NL", {"recipe": "ends_up"}) is None


def test_a_faster_default_whose_weights_missed_the_perplexity_floor_never_wins(
    tmp_path: Path,
) -> None:
    """Under a perplexity floor, the search measured Q4_0 (within it) and Q4_K_M (over it, with
    accuracy to spare); llama.cpp's Q4_K_M defaults decode faster side by side, but their
    weights missed the floor, so the search's Q4_0 stays the answer."""
    from haqa.goal import Goal

    class Q4KMOverTheFloor(FastDefaults):
        def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
            ppl = 10.2 if config.quant_type == "Q4_0" else 11.0
            return (
                super()
                .deploy(config, adapter)
                .model_copy(update={"perplexity": ppl, "reference_perplexity": 10.0})
            )

    store = Store(tmp_path / "haqa.duckdb")
    brain = ScriptedBrain(["Q4_0", "Q4_K_M"])
    goal = Goal.parse("decode", max_perplexity_increase_pct=5)
    budgets = Budgets(finetune_trials=0, deploy_trials=2)
    rt = instant_runtime(store, brain, budgets, Q4KMOverTheFloor(), goal=goal)
    drive(rt)
    result = RunResult.model_validate(store.get_run(rt.run_id).result)
    assert result.found and result.config is not None
    assert result.config["quant_type"] == "Q4_0", result.race_winner
    assert result.race_winner != "llama.cpp's defaults at Q4_K_M"


def test_llama_cpp_defaults_use_no_more_cores_than_the_target_may() -> None:
    """A fleet kind whose node advertises one CPU of a two-core machine: its probe reads two
    physical cores, but the defaults raced against its answer run on the one it may use (else a
    2-thread default could win and be answered for a 1-CPU kind)."""
    from haqa.agents.supervisor.result import llama_defaults

    brief = {"physical_cores": 2, "logical_cores": 4}
    assert llama_defaults(brief).n_threads == 2
    assert llama_defaults(brief, max_threads=1).n_threads == 1
    assert llama_defaults(brief, max_threads=1).threads_batch == 1
    assert llama_defaults(brief, max_threads=8).n_threads == 2
