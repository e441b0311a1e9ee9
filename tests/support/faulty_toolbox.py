"""A toolbox whose fine-tune misbehaves on purpose, to prove trial isolation (imported by the
trial worker in its child process). The fault is chosen by the fine-tune config's seed."""

from __future__ import annotations

import ctypes
import time

from haqa.errors import HaqaError
from haqa.schemas import FinetuneConfig, TrialMetrics
from haqa.trials.toolbox import LiveToolbox

SEGFAULT, OOM, HANG, RAISE, USER_ERROR = 11, 12, 13, 14, 15


class FaultyToolbox(LiveToolbox):
    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        if config.seed == SEGFAULT:
            print("about to dereference NULL", flush=True)
            ctypes.string_at(0)
        if config.seed == OOM:
            hog = []
            while True:  # grow until the parent kills us
                hog.append(bytearray(64 << 20))
                time.sleep(0.01)
        if config.seed == HANG:
            time.sleep(3600)
        if config.seed == RAISE:
            raise RuntimeError("kernel exploded")
        if config.seed == USER_ERROR:
            raise HaqaError("train file x.jsonl does not exist: pass a JSONL file")
        return TrialMetrics(accuracy=0.5, seed=config.seed)


#: The trial worker's ``factory`` for this toolbox (its child needs ``tests/`` on PYTHONPATH).
FACTORY = f"{__name__}:{FaultyToolbox.__name__}"
