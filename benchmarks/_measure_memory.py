"""Measuring helpers for benchmarks that need the allocator's peak, step times and a results header.

The CPU peak is the one `llama_sft.plan.measure` reads (c10's CPU allocator through the profiler's
memory events), so benchmark rows and planner validation rows count the same bytes.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git(*cmd: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def header() -> dict:
    """Commit (and whether the tree was clean), machine, versions: what a results file must name."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "clean_tree": not dirty,
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "versions": versions,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }


@contextmanager
def cpu_peak():
    """Yields a dict whose "peak_bytes" is, on exit, the most bytes c10's CPU allocator held while the
    block ran, above what was live when it started (as `llama_sft.plan.measure`, which reads the same
    profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        extra = node.extra_fields
        if type(extra).__name__ == "_ExtraFields_Allocation" and str(extra.device) == "cpu":
            events.append((node.start_time_ns, extra.total_allocated, extra.alloc_size))
    events.sort()
    # The allocator's running total may carry an offset from earlier profiled blocks: count from the
    # live total just before this block's first allocation.
    base = events[0][1] - events[0][2] if events else 0
    out["peak_bytes"] = max((t for _, t, _ in events), default=base) - base


def run_worker(script: Path, spec: dict, timeout: int = 3600) -> dict:
    """Run `script spec_json` in a fresh process (a fresh allocator) and parse its last JSON line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
