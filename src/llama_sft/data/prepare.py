"""Tokenize once per cache, whatever the number of processes: a file lock instead of a collective.

Under torchrun every rank builds its datasets. Making ranks 1..N wait in a barrier while rank 0
tokenizes (`main_process_first`) ties the tokenization time to the collective timeout (30 minutes by
default), so a large dataset kills the job before the first step. Here each process takes an
exclusive lock on the cache entry's key (`<cache_dir>/<key>.lock`), then either finds the entry or
builds it; the others block on the lock, which has no timeout and is released by the kernel if the
holder dies. Whoever holds the lock first tokenizes; the rest read. With the cache on a filesystem
all nodes share that is once per cluster, with a node-local cache once per node. The entry itself is
published by an atomic rename (`publish_cache`), so even without working locks no reader sees half
of it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from .dataset import build_dataset, cache_key, default_cache_dir

log = logging.getLogger("llama_sft")

# Test hook: seconds the tokenizing process waits before it publishes the cache, to prove that the
# other ranks wait on the lock and not in a collective with a timeout.
SLOW_ENV = "LLAMA_SFT_TEST_SLOW_TOKENIZE_S"


def cache_entry(
    paths: Sequence[str | Path],
    tokenizer,
    template,
    max_length: int,
    strategy: str,
    data_format: str = "auto",
    skip_bad: bool = False,
    strict: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """The directory `build_dataset` reads and writes for these inputs (same key)."""
    key = cache_key(paths, tokenizer, template, max_length, strategy, f"{data_format}|{skip_bad}|{strict}")
    return Path(cache_dir or default_cache_dir()) / key


def build_dataset_once(paths: Sequence[str | Path], tokenizer, template, max_length: int, **kwargs):
    """`build_dataset` under the entry's file lock. Returns what it returns; `stats["cache"]` is "hit"
    when another process (or an earlier `llama-sft data prepare`) built the entry."""
    from filelock import FileLock

    entry = cache_entry(
        paths,
        tokenizer,
        template,
        max_length,
        kwargs.get("strategy", "train_on_assistant"),
        kwargs.get("data_format", "auto"),
        kwargs.get("skip_bad", False),
        kwargs.get("strict", False),
        kwargs.get("cache_dir"),
    )
    if (entry / "meta.json").exists():  # the common case: prepared beforehand, no lock needed
        return build_dataset(paths, tokenizer, template, max_length, **kwargs)
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(entry) + ".lock")
    started = time.monotonic()
    with lock:  # blocks without a timeout: tokenization may take hours
        waited = time.monotonic() - started
        if (entry / "meta.json").exists():
            log.info("data: read the cache another process built (waited %.0f s): %s", waited, entry)
            return build_dataset(paths, tokenizer, template, max_length, **kwargs)
        delay = float(os.environ.get(SLOW_ENV, "0") or 0)
        if delay:
            time.sleep(delay)  # test hook only (see SLOW_ENV)
        result = build_dataset(paths, tokenizer, template, max_length, **kwargs)
        log.info("data: tokenized into %s", entry)
        return result
