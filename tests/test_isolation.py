"""Trial isolation: a segfault, an OOM, a hang or an exception in a trial becomes a reason; the
parent process survives and no child is left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
from support.faulty_toolbox import FACTORY as FAULTY_FACTORY
from support.faulty_toolbox import HANG, OOM, RAISE, SEGFAULT, USER_ERROR

from haqa.errors import HaqaError
from haqa.schemas import FinetuneConfig
from haqa.trials.isolation import IsolatedToolbox, TrialCrash
from haqa.trials.toolbox import ToolboxSettings


@pytest.fixture()
def box(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> IsolatedToolbox:
    here = str(Path(__file__).parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    )
    settings = ToolboxSettings(model=tmp_path, train_files=[], validation_files=[], test_files=[])
    return IsolatedToolbox(
        settings,
        timeout_s=8,
        memory_limit_bytes=400 << 20,
        factory=FAULTY_FACTORY,
    )


def _no_children_left() -> bool:
    time.sleep(0.2)
    return not psutil.Process().children(recursive=True)


def test_a_normal_trial_returns_its_metrics(box: IsolatedToolbox) -> None:
    assert box.finetune(FinetuneConfig(seed=1)).accuracy == 0.5


@pytest.mark.parametrize(
    ("seed", "reason"),
    [
        (SEGFAULT, "segfault (SIGSEGV)"),
        (OOM, "out of memory"),
        (HANG, "timed out"),
        (RAISE, "RuntimeError: kernel exploded"),
    ],
)
def test_faults_become_reasons(box: IsolatedToolbox, seed: int, reason: str) -> None:
    with pytest.raises(TrialCrash) as info:
        box.finetune(FinetuneConfig(seed=seed))
    assert reason in str(info.value)
    if seed == SEGFAULT:
        assert "about to dereference NULL" in str(info.value)  # the tail of the trial's log
    assert _no_children_left()


def test_user_errors_stay_user_errors(box: IsolatedToolbox) -> None:
    with pytest.raises(HaqaError, match="does not exist"):
        box.finetune(FinetuneConfig(seed=USER_ERROR))
