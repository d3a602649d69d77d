"""The tool-use demo set the package ships is exactly what its generator writes, and it validates."""

from __future__ import annotations

import json

from llama_sft.data.validate import load_conversations
from llama_sft.tool_demo import make_tool_splits, shipped_path


def test_shipped_tool_set_is_the_generators_output_and_valid():
    train, held = make_tool_splits()
    for split, records in (("train", train), ("heldout", held)):
        lines = shipped_path(split).read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == records
        conversations, report = load_conversations(shipped_path(split))
        assert len(conversations) == len(records) and not report.issues
    train_cities = {
        m["tool_calls"][0]["function"]["arguments"]["city"]
        for r in train
        for m in r["messages"]
        if m.get("tool_calls")
    }
    held_cities = {
        m["tool_calls"][0]["function"]["arguments"]["city"]
        for r in held
        for m in r["messages"]
        if m.get("tool_calls")
    }
    assert held_cities and not held_cities & train_cities  # held-out prompts name unseen cities
