"""While the weights load, make glibc's malloc give freed tensor buffers back to the operating system.

Loading allocates and frees model-sized memory in bulk: a rank that receives its FSDP shards by
broadcast (`cpu_ram_efficient_loading`) takes each full parameter into a fresh buffer, keeps its
shard and frees the rest; ZeRO-3 gathers and re-partitions each parameter as transformers loads it.
glibc serves an allocation from `mmap` (returned to the system on `free`) only above its mmap
threshold, and raises that threshold every time such a block is freed, up to 32 MiB. After the first
few parameters every buffer of a decoder layer is below it, so it comes from the heap, where freed
memory stays with the process unless it is at the top: measured on 2 CPU processes and a 292 MiB
model, rank 1's anonymous memory grew by 257 MiB (FSDP) and 346 MiB (ZeRO-3) while loading, more
than its 146 MiB shard plus 40 MiB of fixed costs would explain (docs/distributed.md). It is the
allocator, not a tensor kept alive: with the threshold pinned the same runs peak at 187 MiB.

So the threshold is pinned at glibc's starting value (128 KiB) from before the weights load until the
Trainer has prepared the model, then set back to the value the dynamic rule converges to and the
heap trimmed. Not for the whole run: on CPU every large activation would then be a fresh mmap with
its page faults, and training steps took twice the time (sys time 1.1 s -> 7.2 s over 8 steps).

Nothing is done where the user chose the allocator's behaviour (`MALLOC_MMAP_THRESHOLD_`,
`GLIBC_TUNABLES` with `mmap_threshold`, or jemalloc/tcmalloc in `LD_PRELOAD`), or off glibc.
`train/callbacks.py`'s `LeanLoading` does it around `llama-sft train`'s loading; plain functions here
(no torch, no transformers) so that a fresh process can test them cheaply.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
LOADING_THRESHOLD = 128 * 1024  # glibc's initial mmap threshold
# What the dynamic rule reaches once model-sized blocks have been freed (DEFAULT_MMAP_THRESHOLD_MAX on
# 64-bit; the trim threshold follows at twice the mmap threshold).
TRAINING_THRESHOLD = 32 * 1024 * 1024


def _glibc():
    """The process's C library when it is glibc's malloc and nobody asked for another behaviour."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def pin_mmap_threshold(threshold: int = LOADING_THRESHOLD) -> bool:
    """Every allocation of `threshold` bytes or more from mmap from now on (freed = returned)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_after_loading() -> None:
    """The threshold where the dynamic rule would have taken it, and freed heap memory returned."""
    libc = _glibc()
    if libc:
        libc.mallopt(M_MMAP_THRESHOLD, TRAINING_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * TRAINING_THRESHOLD)
        libc.malloc_trim(0)
