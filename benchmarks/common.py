"""Measuring helpers every benchmark shares: the commit and versions a result ran on, clocks, peak RSS.

A result is only worth committing if it says which code produced it. `provenance()` records
`git rev-parse HEAD` and whether the tree was clean; `require_clean()` stops a saving run on a dirty
tree (the numbers would belong to no commit) unless the caller asks to flag it instead. The workflow
is: commit the code, run the benchmark, commit the results file (whose commit then follows the one it
names).

Peer systems (TRL, FastChat's `fschat`) are never dependencies of llama-sft; they live in a separate
venv, `.venv-bench/` at the repository root (`bench_venv_help()` prints how to make it), and a
benchmark run from the project venv re-executes itself there (`reexec_in_bench_venv`).
"""

from __future__ import annotations

import datetime
import gc
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCH_VENV = REPO / ".venv-bench"
REEXEC_FLAG = "LLAMA_SFT_BENCH_REEXEC"
VERSIONED = ("torch", "transformers", "tokenizers", "peft", "datasets", "numpy", "trl", "fschat", "llama-sft")
BENCH_VENV_COMMANDS = """    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0                       # the CPU wheel first, as the Makefile does
    .venv-bench/bin/pip install -e . trl==1.16.0 requests gguf       # requests: fastchat's one import beyond ours
    .venv-bench/bin/pip install --no-deps fschat==0.2.36             # its own requirements are for serving"""


def bench_venv_help(missing: str) -> str:
    return (
        f"NOTE: {missing} is not importable in {sys.executable}. Peers live in a separate venv; make it once "
        f"(from {REPO}) and the benchmark re-runs itself there:\n{BENCH_VENV_COMMANDS}"
    )


def reexec_in_bench_venv(modules: tuple[str, ...]) -> None:
    """Re-run the calling script under `.venv-bench/bin/python` when one of `modules` is missing here."""
    if all(importlib.util.find_spec(m) for m in modules) or os.environ.get(REEXEC_FLAG):
        return
    python = BENCH_VENV / "bin" / "python"
    if python.exists():
        print(f"{', '.join(modules)} not all importable here; re-running under {python}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(str(python), [str(python), *sys.argv], {**os.environ, REEXEC_FLAG: "1"})


# --------------------------------------------------------------------------- provenance


def _git(*cmd: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip("\n") if done.returncode == 0 else None


def dirty_paths() -> list[str]:
    """Uncommitted changes to tracked or untracked files, results files excluded (a run writes them)."""
    lines = (_git("status", "--porcelain", "--untracked-files=normal") or "").splitlines()
    return [line[3:] for line in lines if not line[3:].startswith("benchmarks/results/")]


def require_clean(allow_dirty: bool) -> None:
    """Stop before measuring anything on a dirty tree, unless the caller flags it in the results."""
    dirty = dirty_paths()
    if dirty and not allow_dirty:
        sys.exit(
            "error: the working tree has uncommitted changes "
            f"({', '.join(dirty[:5])}{' ...' if len(dirty) > 5 else ''}); results must name the commit that "
            "produced them. Commit first, or pass --allow-dirty (the results then say so)."
        )


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def provenance() -> dict:
    """Commit, tree state, machine, load and versions: the header of every results file."""
    dirty = dirty_paths()
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_clean": not dirty,
        "git_dirty_paths": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "cores_visible": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m_at_start": load_average(),
        "platform": platform.platform(),
        "versions": {"python": platform.python_version()} | {n: package_version(n) for n in VERSIONED},
    }


def finish(prov: dict) -> dict:
    """Add what is known only at the end of a run (load, elapsed) to a `provenance()` dict."""
    return prov | {"load_average_1m_at_end": load_average()}


def header_lines(prov: dict, command: str) -> list[str]:
    """Markdown: the command, the commit (and whether the tree was clean), machine, load, versions."""
    commit = prov["git_commit"] or "unknown"
    tree = (
        "clean tree"
        if prov["git_clean"]
        else f"**uncommitted changes: {', '.join(prov['git_dirty_paths'][:8])}** (flagged with --allow-dirty)"
    )
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items() if v)
    return [
        f"`{command}`, {prov['date']}, commit `{commit}` ({tree}).",
        f"Machine: {prov['cpu']}, {prov['cores_usable']} usable cores, shared: 1-minute load average "
        f"{prov['load_average_1m_at_start']} at the start, {prov.get('load_average_1m_at_end')} at the end.",
        f"Versions: {versions}.",
    ]


# --------------------------------------------------------------------------- clocks and memory


def timed(fn, *args):
    """(output, wall seconds, CPU seconds of this process, all its threads)."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def median(values) -> float:
    return statistics.median(values)


class PeakRSS:
    """Resident set size sampled in a thread (a training step allocates and frees far more than it keeps)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.start = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())
