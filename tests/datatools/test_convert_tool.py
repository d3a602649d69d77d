"""`llama-sft data convert`: lossless where the target holds the record, a listed error where not."""

from __future__ import annotations

import json

import pytest
from ci import require_module
from dt_helpers import counts, read_jsonl, sharegpt

SHAREGPT = [
    {
        "id": "m",
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "q", "name": "ann"},
            {"from": "gpt", "value": "a", "weight": 0},
        ],
        "source": "forum",
        "tags": ["x"],
    },
    sharegpt("one", ("human", "q1"), ("gpt", "a1")),
]
OPENAI = [
    {
        "id": "m",
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q", "name": "ann"},
            {"role": "assistant", "content": "a", "weight": 0},
        ],
        "source": "forum",
        "tags": ["x"],
    },
    {"id": "one", "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
]


def test_sharegpt_openai_round_trip_is_lossless(cli, jsonl, tmp_path):
    src = jsonl("in.jsonl", SHAREGPT)
    code, report, _ = cli("convert", src, "--to", "openai", "-o", tmp_path / "o.jsonl")
    assert code == 0 and read_jsonl(tmp_path / "o.jsonl") == OPENAI and report["changed"] == 0
    assert cli("convert", tmp_path / "o.jsonl", "--to", "sharegpt", "-o", tmp_path / "s.jsonl")[0] == 0
    assert read_jsonl(tmp_path / "s.jsonl") == SHAREGPT
    assert (tmp_path / "s.jsonl").read_bytes() == src.read_bytes()


def test_alpaca_conversions(cli, jsonl, tmp_path):
    alpaca = [
        {"id": "0", "instruction": "Translate", "input": "chat", "output": "cat", "system": "S"},
        {"id": "1", "instruction": "Say hi", "input": "", "output": "hi", "lang": "en"},
    ]
    src = jsonl("a.jsonl", alpaca)
    # A chat turn has one prompt: instruction and input are joined as training joins them.
    assert cli("convert", src, "--to", "sharegpt", "-o", tmp_path / "s.jsonl")[0] == 0
    assert read_jsonl(tmp_path / "s.jsonl") == [
        sharegpt("0", ("system", "S"), ("human", "Translate\n\nchat"), ("gpt", "cat")),
        sharegpt("1", ("human", "Say hi"), ("gpt", "hi"), lang="en"),
    ]
    assert cli("convert", tmp_path / "s.jsonl", "--to", "alpaca", "-o", tmp_path / "a2.jsonl")[0] == 0
    assert read_jsonl(tmp_path / "a2.jsonl")[0]["instruction"] == "Translate\n\nchat"
    # Alpaca to Alpaca keeps the two fields apart.
    assert cli("convert", src, "--to", "alpaca", "-o", tmp_path / "a3.jsonl")[0] == 0
    assert read_jsonl(tmp_path / "a3.jsonl") == alpaca


def test_multi_turn_to_alpaca_is_an_error_listing_every_record(cli, jsonl, tmp_path):
    records = [
        sharegpt("two", ("human", "q1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2")),
        SHAREGPT[0],
        SHAREGPT[1],
        sharegpt("trail", ("human", "q1"), ("gpt", "a1"), ("human", "q2")),
    ]
    out = tmp_path / "a.jsonl"
    code, report, err = cli("convert", jsonl("in.jsonl", records), "--to", "alpaca", "-o", out)
    assert code == 2 and not out.exists()
    assert counts(report) == {"multi_turn": 1, "turn_fields": 1, "not_user_assistant_pairs": 1}
    assert "pass --flatten" in {r["reason"]: r for r in report["reasons"]}["multi_turn"]["examples"][0]
    assert "nothing was written" in err
    code, report, _ = cli("convert", jsonl("in.jsonl", records), "--to", "alpaca", "-o", out, "--skip_bad")
    assert code == 0 and [r["id"] for r in read_jsonl(out)] == ["one"]
    assert counts(report) == {"multi_turn": 1, "turn_fields": 1, "not_user_assistant_pairs": 1}
    assert {row["action"] for row in report["reasons"]} == {"dropped"}


def test_flatten_writes_one_alpaca_record_per_round(cli, jsonl, tmp_path):
    records = [
        sharegpt("two", ("system", "S"), ("human", "q1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2")),
        SHAREGPT[0],
    ]
    out = tmp_path / "a.jsonl"
    code, report, _ = cli("convert", jsonl("in.jsonl", records), "--to", "alpaca", "--flatten", "-o", out)
    assert code == 0
    assert read_jsonl(out) == [
        {"id": "two_1", "instruction": "q1", "input": "", "output": "a1", "system": "S", "history": []},
        {
            "id": "two_2",
            "instruction": "q2",
            "input": "",
            "output": "a2",
            "system": "S",
            "history": [["q1", "a1"]],
        },
        {
            "id": "m",
            "instruction": "q",
            "input": "",
            "output": "a",
            "system": "S",
            "source": "forum",
            "tags": ["x"],
        },
    ]
    assert counts(report) == {"flattened": 1, "turn_fields_dropped": 1}


def test_openai_content_parts_are_joined_and_counted(cli, jsonl, tmp_path):
    record = {
        "id": "p",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
        ],
    }
    code, report, _ = cli(
        "convert", jsonl("in.jsonl", [record]), "--to", "sharegpt", "-o", tmp_path / "s.jsonl"
    )
    assert code == 0 and read_jsonl(tmp_path / "s.jsonl") == [sharegpt("p", ("human", "ab"), ("gpt", "c"))]
    assert counts(report) == {"content_parts_joined": 1}


@pytest.mark.parametrize("with_ijson", [True, False])
def test_json_array_input(cli, tmp_path, monkeypatch, with_ijson):
    if with_ijson:
        require_module("ijson")
    else:
        import builtins

        real_import = builtins.__import__

        def no_ijson(name, *args, **kwargs):
            if name == "ijson":
                raise ImportError("no ijson")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_ijson)
    src = tmp_path / "in.json"
    src.write_text(
        json.dumps(
            SHAREGPT
            + [{"id": "f", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": 1.5}]}]
        )
    )
    code, report, _ = cli("convert", src, "--to", "openai", "-o", tmp_path / "o.jsonl", "--skip-bad")
    assert code == 0 and read_jsonl(tmp_path / "o.jsonl") == OPENAI
    assert counts(report) == {"non_string_content": 1}
