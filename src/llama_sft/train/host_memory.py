"""Host RAM per process while the model loads, gathered from every rank into the run record.

Loading is where host memory peaks on big models: a naive load holds the whole checkpoint on every
rank (a 70B model is ~140 GB per process in bf16). Under FSDP with `cpu_ram_efficient_loading` only
rank 0 reads the weights (model/lean_load.py); under ZeRO-3 `zero.Init` partitions them as they
load. This measures it per rank instead of assuming it (`run_record.json` -> `host_memory`).

What is counted: anonymous resident memory (RssAnon, the process's own pages). The file pages of
the memory-mapped safetensors are page cache, shared by every rank of a node and dropped by the
kernel under pressure, so plain RSS would count them once per rank; their growth is recorded apart
(`file_peak_mb`: it shows which ranks read the checkpoint). Sampled every 10 ms from before
the weights load, with the value and the peak at each phase boundary:

- `loaded`: the weights are read (or, on ranks that receive them, the empty model is built) and the
  adapters added;
- `prepared`: the Trainer has prepared the model (FSDP sharded it and broadcast the weights, or
  DeepSpeed built its engine): `on_train_begin`;
- `first_step`: the first optimizer step is done (gradients and optimizer state now exist).

`load_peak` is the peak up to `prepared` (what loading costs); `kept_after_prepare` is what is still
there at `prepared` (on CPU the "device" is host memory too, so this is each rank's share of the
model under the strategy, plus what loading failed to free). The run's peak RSS as the kernel
reports it (file pages included) comes with them.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

from transformers import TrainerCallback


def resident_mb() -> tuple[float, float]:
    """(RssAnon, RssFile) in MiB: the process's own pages and its mapped files' pages; 0 without /proc."""
    found = {"RssAnon": 0.0, "RssFile": 0.0}
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in found:
                    found[name] = int(value.split()[0]) / 1024  # "  123456 kB"
    except OSError:
        pass
    return found["RssAnon"], found["RssFile"]


def anon_mb() -> float:
    """Anonymous resident memory (RssAnon) in MiB; 0 where /proc is missing."""
    return resident_mb()[0]


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class HostMemory(TrainerCallback):
    """Start it just before the weights load, call `loaded()` after them; it stops sampling after
    the first optimizer step."""

    def __init__(self, interval_s: float = 0.01):
        self.rank = int(os.environ.get("RANK", "0"))
        self.before, self.file_before = resident_mb()
        self.peak, self.file_peak = self.before, self.file_before
        self.phases: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._update()

    def _update(self) -> float:
        anon, file = resident_mb()
        self.peak, self.file_peak = max(self.peak, anon), max(self.file_peak, file)
        return anon

    def _mark(self, phase: str) -> None:
        if self._stop.is_set() or phase in self.phases:
            return
        now = self._update()
        self.phases[phase] = {
            "anon_mb": round(now - self.before),
            "peak_mb": round(self.peak - self.before),
            "file_peak_mb": round(self.file_peak - self.file_before),
        }

    def loaded(self) -> None:
        self._mark("loaded")

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark("prepared")

    def on_step_end(self, args, state, control, **kwargs):
        self._mark("first_step")
        self._stop.set()

    def mine(self) -> dict:
        self._mark("end")  # a run that stopped before its first step
        self._stop.set()
        prepared = self.phases.get("prepared", self.phases.get("end", {}))
        return {
            "rank": self.rank,
            "anon_before_load_mb": round(self.before),
            # MiB added since before loading, at each phase: anonymous now, its peak so far, file peak
            "phases": self.phases,
            "load_peak_mb": prepared.get("peak_mb"),
            "kept_after_prepare_mb": prepared.get("anon_mb"),
            # growth of mapped-file pages (the checkpoint read through mmap) while loading: page
            # cache, shared by the ranks of a node; it shows which ranks read the weights
            "file_load_peak_mb": prepared.get("file_peak_mb"),
            "run_peak_rss_mb": round(peak_rss_mb()),
        }

    def gather(self) -> list[dict]:
        """Every rank's numbers (a collective: call on all ranks)."""
        import torch.distributed as dist

        mine = self.mine()
        if not (dist.is_available() and dist.is_initialized()):
            return [mine]
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        return sorted(everyone, key=lambda d: d["rank"])
