"""Build llama.cpp's own tools (``llama-bench``, ``llama-imatrix``, ``llama-quantize``) from the
sources llama-cpp-python vendors.

Each binary is built once per llama-cpp-python version into
``$HAQA_HOME/llama-bench/<version>/shared/<tool>``, from the sdist of the installed version
(``pip download --no-binary``), as shared libraries, and run with ``tool_env()``: the loader
takes ``libllama`` and ``libggml*`` from the installed wheel, so the comparisons in
``llama_bench_fidelity.py`` and ``imatrix_agreement.py`` run *the very kernels* haqa runs, and
only the driver differs (the tool's C++ loop against haqa's Python one). A static build of the
same sources is other machine code (other flags: position-dependent, another layout, the wheel
may have been compiled on another CPU and cached by pip): it read pp 6–16% below haqa at two
threads on a Xeon while tg agreed, a difference of builds, not of measurement.

Run alone to build: ``.venv/bin/python bench/llama_bench_build.py [llama-imatrix ...]``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from haqa.errors import HaqaError
from haqa.paths import haqa_home


def llama_cpp_version() -> str:
    return version("llama-cpp-python")


def bench_dir() -> Path:
    return haqa_home() / "llama-bench" / llama_cpp_version()


def wheel_lib_dir() -> Path:
    """Where the installed llama-cpp-python keeps its ``libllama``/``libggml*``."""
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def tool_env() -> dict[str, str]:
    """The environment a built tool runs in: the wheel's libraries first (``LD_LIBRARY_PATH``
    is searched before the binary's own run path), then the tool's own (``libllama-common``)."""
    paths = [str(wheel_lib_dir()), str(bench_dir() / "shared")]
    if os.environ.get("LD_LIBRARY_PATH"):
        paths.append(os.environ["LD_LIBRARY_PATH"])
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(paths)}


def ensure_llama_bench(jobs: int = 2) -> Path:
    """The path of the built ``llama-bench``; builds it first (minutes) if it is missing."""
    return ensure_llama_tool("llama-bench", jobs)


def ensure_llama_tool(tool: str, jobs: int = 2) -> Path:
    """The path of a built llama.cpp tool (a CMake target such as ``llama-imatrix``); builds it
    first (minutes) if it is missing."""
    out = bench_dir()
    exe = out / "shared" / tool
    if exe.is_file():
        return exe
    for needed in ("cmake", "c++"):
        if shutil.which(needed) is None:
            raise HaqaError(f"building {tool} needs {needed}: install it (e.g. apt-get install)")
    out.mkdir(parents=True, exist_ok=True)
    ver = llama_cpp_version()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        sdist = out / f"llama_cpp_python-{ver}.tar.gz"
        if not sdist.is_file():
            print(f"downloading the llama-cpp-python {ver} sdist ...", flush=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*cmd, f"llama-cpp-python=={ver}", "-d", str(work)], check=True)
            shutil.move(str(next(work.glob("llama_cpp_python-*.tar.gz"))), sdist)
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(work, members=members, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        flags = [
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=ON",
            "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_OPENSSL=OFF",
        ]
        print(f"building {tool} {ver} (a few minutes) ...", flush=True)
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), *gen, *flags], check=True)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", tool, "-j", str(jobs)],
            check=True,
        )
        (out / "shared").mkdir(exist_ok=True)
        # The tool's own libraries (libllama-common); the wheel's replace the rest at run time.
        wheel = {p.name for p in wheel_lib_dir().glob("*.so*")}
        for lib in (build / "bin").glob("*.so*"):
            if lib.name not in wheel:
                dest = out / "shared" / lib.name
                dest.unlink(missing_ok=True)  # a second tool's build brings the same links
                shutil.copy2(lib, dest, follow_symlinks=False)
        tmp_exe = out / "shared" / f"{tool}.tmp"
        shutil.copy2(build / "bin" / tool, tmp_exe)
        tmp_exe.replace(exe)  # atomic: a half-copied binary is never taken as built
    return exe


if __name__ == "__main__":
    for name in sys.argv[1:] or ["llama-bench"]:
        print(ensure_llama_tool(name))
