"""`data convert` with tool-calling records: OpenAI <-> LLaMA-Factory ShareGPT, Alpaca refused by name."""

from __future__ import annotations

from dt_helpers import counts, read_jsonl
from tool_cases import openai_record, sharegpt_record

from llama_sft.data.tools import read_checked


def calls(record: dict) -> list:
    messages, tools, _ = read_checked(record)
    return [(m.role, m.content, [(c.name, c.parsed()) for c in m.tool_calls]) for m in messages], tools


def test_tool_records_convert_both_ways_and_still_validate(cli, jsonl, tmp_path):
    src = jsonl("in.jsonl", [sharegpt_record(), openai_record(source="forum")])
    code, report, _ = cli("convert", src, "--to", "openai", "-o", tmp_path / "o.jsonl")
    assert code == 0 and counts(report) == {"tool_format_converted": 1}
    openai = read_jsonl(tmp_path / "o.jsonl")
    assert [r["id"] for r in openai] == ["weather-sg", "weather-1"] and openai[1]["source"] == "forum"
    assert openai[0]["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert cli("convert", tmp_path / "o.jsonl", "--to", "sharegpt", "-o", tmp_path / "s.jsonl")[0] == 0
    sharegpt = read_jsonl(tmp_path / "s.jsonl")
    assert [t["from"] for t in sharegpt[1]["conversations"]] == [
        "human",
        "function_call",
        "observation",
        "gpt",
    ]
    for before, after in zip([sharegpt_record(), openai_record()], sharegpt, strict=True):
        assert calls(after) == calls(before)


def test_tool_records_cannot_become_alpaca(cli, jsonl, tmp_path):
    code, report, _ = cli(
        "convert", jsonl("in.jsonl", [openai_record()]), "--to", "alpaca", "-o", tmp_path / "a.jsonl"
    )
    assert code != 0 and counts(report) == {"tool_calls": 1}
