"""A QLoRA fine-tune in a child process, for tests that compare its peak RSS with an estimate:
the child's peak is the fine-tune's alone, not the test process's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from haqa.schemas import FinetuneConfig

_CHILD = r"""
import json, sys
from pathlib import Path
from haqa.schemas import FinetuneConfig
from haqa.tools.run_qlora import Args, run_qlora
model, data, out, cfg = sys.argv[1:5]
result = run_qlora(Args(model=Path(model), config=FinetuneConfig(**json.loads(cfg)),
                        train_files=[Path(p) for p in data.split(",")], output_dir=Path(out)))
print(json.dumps({"peak": result.peak_mem_bytes, "losses": result.loss_curve,
                  "time_s": result.train_time_s}))
"""


def qlora_in_child(
    model: Path, train_files: list[Path], out: Path, config: FinetuneConfig
) -> dict[str, Any]:
    """Run the fine-tune in a fresh interpreter: its peak RSS, loss curve and training time."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(model), ",".join(str(f) for f in train_files),
         str(out), config.model_dump_json()],
        capture_output=True, text=True, check=True, timeout=900,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
