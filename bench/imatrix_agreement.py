"""haqa's importance matrix against llama.cpp's own ``llama-imatrix`` on the same model and text.

``llama-imatrix`` is built from the sources llama-cpp-python vendors (``llama_bench_build.py``),
run on the zoo's SmolLM2-135M-Instruct F16 GGUF over its calibration prose with the same chunking
as ``compute_imatrix``; both files are read as llama-quantize reads them (mean squared input per
column). Printed: the weights each covers, the worst cosine similarity of a weight's importances
and the largest relative difference of a weight's mean; then Q2_K and Q3_K_M quantized with no
imatrix, with llama-imatrix's and with haqa's, and their perplexity over held-out prose.

    python bench/imatrix_agreement.py [--chunks 16] [--ppl-windows 16] [--quants Q2_K,Q3_K_M]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from _common import reproduce_line
from llama_bench_build import ensure_llama_tool, tool_env

from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf
from haqa.tools.gguf_loglik import gguf_perplexity
from haqa.tools.imatrix import ImatrixArgs, agreement, compute_imatrix, importance


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quants", default="Q2_K,Q3_K_M,IQ4_NL,Q4_K_M")
    a = ap.parse_args()
    from haqa import zoo

    files = zoo.smollm2_files()
    f16, calib = files.f16_gguf, files.text / "calib.txt"
    exe = ensure_llama_tool("llama-imatrix")
    ours = compute_imatrix(
        ImatrixArgs(gguf=f16, calibration=calib, n_ctx=a.ctx, max_chunks=a.chunks)
    )
    with tempfile.TemporaryDirectory() as tmp:
        theirs_path = Path(tmp) / "llama-imatrix.gguf"
        cmd = [str(exe), "-m", str(f16), "-f", str(calib), "-c", str(a.ctx)]
        cmd += ["--chunks", str(a.chunks), "-o", str(theirs_path), "-t", str(a.threads)]
        cmd += ["--no-ppl", "-b", str(a.ctx)]
        subprocess.run(cmd, check=True, capture_output=True, env=tool_env())
        theirs = importance(theirs_path)
        close = agreement(importance(ours.imatrix_path), theirs)
        print(reproduce_line())
        print(
            f"{a.chunks} chunks of {a.ctx} tokens of {calib.name}; haqa {ours.n_entries} weights, "
            f"llama-imatrix {len(theirs)}; in common {close['common']:.0f}; worst cosine "
            f"{close['min_cosine']:.7f}; largest relative difference of a weight's mean "
            f"{close['max_rel_mean_diff']:.2e}"
        )
        text = (files.text / "eval.txt").read_text()
        print()
        print("| type | no imatrix | llama-imatrix | haqa imatrix |")
        print("|---|---|---|---|")
        for quant in a.quants.split(","):
            ppl = []
            for im in (None, theirs_path, ours.imatrix_path):
                out = quantize_gguf(QuantizeArgs(gguf=f16, quant_type=quant, imatrix=im))  # type: ignore[arg-type]
                ppl.append(
                    gguf_perplexity(
                        out.gguf_path, text, n_threads=a.threads, max_chunks=a.ppl_windows
                    ).perplexity
                )
            print(f"| {quant} | {ppl[0]:.2f} | {ppl[1]:.2f} | {ppl[2]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
