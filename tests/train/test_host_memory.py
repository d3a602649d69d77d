"""train/host_memory.py: the phases it records are the memory added since before loading, the load
peak survives a release, and sampling stops after the first step."""

from __future__ import annotations

import mmap
import sys

import pytest
from ci import in_ci

from llama_sft.train.host_memory import HostMemory, resident_mb


@pytest.mark.skipif(not sys.platform.startswith("linux") and not in_ci(), reason="reads /proc/self/status")
def test_phases_peak_and_release():
    memory = HostMemory()
    # 64 MiB of anonymous pages from mmap itself, touched: malloc could serve a tensor from free heap
    # that an earlier test left (then freeing keeps it resident), while munmap always returns them.
    block = mmap.mmap(-1, 64 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: RssAnon
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    memory.loaded()
    memory.on_train_begin(None, None, None)
    block.close()
    memory.on_step_end(None, None, None)
    mine = memory.mine()
    assert mine["phases"]["loaded"]["anon_mb"] >= 60 and mine["load_peak_mb"] >= 60, mine
    assert mine["phases"]["first_step"]["anon_mb"] < 30, mine  # gone, but the peak is remembered
    assert mine["phases"]["first_step"]["peak_mb"] >= 60 and "end" not in mine["phases"], mine
    assert mine["kept_after_prepare_mb"] == mine["phases"]["prepared"]["anon_mb"]
    anon, file = resident_mb()
    assert anon > 0 and file > 0  # python's own text pages are file-backed
