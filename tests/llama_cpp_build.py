"""llama.cpp for tests: llama-cpp-python built from its source distribution (which compiles
llama.cpp), the wheel cached in ~/.cache/llama-sft/wheels so a machine builds it once.

Measured on this project's 2-core CI machine: 508 CPU-seconds (466 user + 42 system), i.e. about
4.5 minutes of wall time on 2 idle cores, 45 minutes when 8 jobs share them; 19.6 MB wheel. That
is paid once per machine: `make test` and `make verify-gguf` build the wheel when it is missing
(LLAMA_SFT_BUILD_LLAMA_CPP=1) and install it; the tests then only use it (under CI=true a missing
build fails them rather than skipping)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
WHEEL_GLOB = "llama_cpp_python-0.3.36-*.whl"
# Portable x86-64 build (AVX2/FMA/F16C, not -march=native) so the cached wheel runs on any CI host.
CMAKE_ARGS = "-DGGML_NATIVE=off -DLLAVA_BUILD=off"


class LlamaCppUnavailable(RuntimeError):
    pass


def wheel_cache() -> Path:
    return Path(os.environ.get("LLAMA_SFT_WHEEL_CACHE") or Path.home() / ".cache" / "llama-sft" / "wheels")


def build_wheel(cache: Path | None = None) -> Path:
    """Compile llama-cpp-python from its sdist into the cache; returns the wheel."""
    cache = cache or wheel_cache()
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-binary",
        ":all:",
        LLAMA_CPP_PYTHON,
        "-w",
        str(cache),
    ]
    started = time.perf_counter()
    print(f"building {LLAMA_CPP_PYTHON} from source (compiles llama.cpp; minutes) ...", file=sys.stderr)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    wheels = sorted(cache.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not wheels:
        raise LlamaCppUnavailable(
            f"building {LLAMA_CPP_PYTHON} failed: {(proc.stderr or proc.stdout)[-800:]}"
        )
    print(f"built {wheels[-1].name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return wheels[-1]


def ensure_llama_cpp(build: bool | None = None):
    """The `llama_cpp` module: installed already, else from the cached wheel (pip install, no
    network), else built when `build` (default: LLAMA_SFT_BUILD_LLAMA_CPP=1)."""
    try:
        import llama_cpp

        return llama_cpp
    except ImportError:
        pass
    build = os.environ.get("LLAMA_SFT_BUILD_LLAMA_CPP") == "1" if build is None else build
    wheels = sorted(wheel_cache().glob(WHEEL_GLOB))
    if not wheels:
        if not build:
            raise LlamaCppUnavailable(
                f"llama-cpp-python is not installed and no wheel is cached in {wheel_cache()}: "
                "run `make verify-gguf` (builds it once, ~4.5 min on 2 idle cores)"
            )
        wheels = [build_wheel()]
    cmd = [sys.executable, "-m", "pip", "install", "-q", str(wheels[-1]), "diskcache>=5.6", "jinja2>=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise LlamaCppUnavailable(f"installing {wheels[-1].name} failed: {proc.stderr[-500:]}")
    import llama_cpp

    return llama_cpp


if __name__ == "__main__":
    print(ensure_llama_cpp(build=True).__file__)
