"""train/host_memory.py: the phases it records are the memory added since before loading, the load
peak survives a release, and sampling stops after the first step."""

from __future__ import annotations

import sys

import pytest
import torch
from ci import in_ci

from llama_sft.train.host_memory import HostMemory, resident_mb


@pytest.mark.skipif(not sys.platform.startswith("linux") and not in_ci(), reason="reads /proc/self/status")
def test_phases_peak_and_release():
    memory = HostMemory()
    block = torch.ones(64 * 2**18)  # 64 MiB: above glibc's largest mmap threshold, so freed = returned
    memory.loaded()
    memory.on_train_begin(None, None, None)
    del block
    memory.on_step_end(None, None, None)
    mine = memory.mine()
    assert mine["phases"]["loaded"]["anon_mb"] >= 60 and mine["load_peak_mb"] >= 60, mine
    assert mine["phases"]["first_step"]["anon_mb"] < 30, mine  # gone, but the peak is remembered
    assert mine["phases"]["first_step"]["peak_mb"] >= 60 and "end" not in mine["phases"], mine
    assert mine["kept_after_prepare_mb"] == mine["phases"]["prepared"]["anon_mb"]
    anon, file = resident_mb()
    assert anon > 0 and file > 0  # python's own text pages are file-backed
