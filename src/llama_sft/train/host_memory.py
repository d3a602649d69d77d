"""Host RAM per process while the model loads, gathered from every rank into the run record.

Loading is where host memory peaks on big models: a naive load holds the whole checkpoint on every
rank (a 70B model is ~140 GB per process in bf16). Under FSDP with `cpu_ram_efficient_loading` only
rank 0 reads the weights (model/lean_load.py); under ZeRO-3 `zero.Init` partitions them as they
load. This measures it per rank instead of assuming it (`run_record.json` -> `host_memory`):
anonymous resident memory (the process's own pages; file pages of the memory-mapped safetensors
are shared page cache, counted once per node, so plain RSS would count them once per rank), sampled
every 10 ms from before the weights load until the model is prepared and training starts, plus the
whole run's peak RSS as the kernel reports it.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

from transformers import TrainerCallback


def anon_mb() -> float:
    """Anonymous resident memory (RssAnon) in MiB; 0 where /proc is missing."""
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class HostMemory(TrainerCallback):
    """Start it just before the weights load; it stops sampling when training begins."""

    def __init__(self, interval_s: float = 0.01):
        self.rank = int(os.environ.get("RANK", "0"))
        self.before = anon_mb()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
        self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.peak = max(self.peak, anon_mb())

    def on_train_begin(self, args, state, control, **kwargs):
        self.peak = max(self.peak, anon_mb())
        self._stop.set()

    def mine(self) -> dict:
        self._stop.set()
        return {
            "rank": self.rank,
            "anon_before_load_mb": round(self.before),
            "anon_load_peak_mb": round(self.peak),
            "load_increase_mb": round(self.peak - self.before),
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
