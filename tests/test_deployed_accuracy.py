"""The deployed artifact's accuracy: the fine-tuned tiny model exported to Q8_0 scores within 2
points of the HF model with its adapter on the same tasks.

Q2_K is measured and printed, not asserted: on the tiny model it is not visibly worse (340 test
questions, a build of 300 steps: HF+adapter 0.650, Q8_0 0.647, Q4_K_M 0.653, Q3_K_M 0.656, Q2_K
0.671). The model's learned function shrugs off weight error of Q2_K's size: Gaussian noise of 0.3x
each block matrix's std costs it 1.5 points, and only noise as large as the weights costs 11
(``bench/quant_accuracy.py`` prints both, and docs/benchmarks.md lists what was tried to make it
sensitive). Q2_K is visibly the worst type by its next-token distributions, not by its answers:
``tests/test_gguf_loglik.py`` asserts its KL divergence from F16 is over ten times Q8_0's. A zoo
model whose accuracy 2-bit weights break is the open item."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa import zoo
from haqa.schemas import FinetuneConfig
from haqa.tools.evaluate import Args as EvalArgs
from haqa.tools.evaluate import evaluate
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf
from haqa.tools.run_qlora import Args as QloraArgs
from haqa.tools.run_qlora import run_qlora

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
