"""Input formats: record shapes (ShareGPT, openchat items, OpenAI, Alpaca) and containers
(JSON, JSONL, parquet, save_to_disk dirs), detected per record or forced."""

from __future__ import annotations

import pytest

from llama_sft.data.formats import detect_format, iter_records, record_to_messages
from llama_sft.data.issues import DataError
from llama_sft.data.validate import load_conversations

SHAREGPT = {"id": "s1", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                          {"from": "gpt", "value": "Hello"}]}  # fmt: skip
OPENCHAT = {"items": [{"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}]}
OPENAI = {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]}  # fmt: skip
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
ALPACA_NO_INPUT = {"instruction": "Say hi.", "input": "", "output": "Hi!"}

EXPECTED = {
    "sharegpt": [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")],
    "openchat": [("user", "Hi"), ("assistant", "Hello")],
    "openai": [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")],
    "alpaca": [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")],
    "alpaca_no_input": [("user", "Say hi."), ("assistant", "Hi!")],
}
RECORDS = {
    "sharegpt": SHAREGPT,
    "openchat": OPENCHAT,
    "openai": OPENAI,
    "alpaca": ALPACA,
    "alpaca_no_input": ALPACA_NO_INPUT,
}


def pairs(conversation):
    return [(m.role, m.content) for m in conversation.messages]


@pytest.mark.parametrize("shape", sorted(RECORDS))
def test_record_shapes(shape):
    assert record_to_messages(RECORDS[shape]) == EXPECTED[shape]


def test_detection():
    assert [detect_format(RECORDS[s]) for s in sorted(RECORDS)] == [
        "alpaca",
        "alpaca",
        "openai",
        "sharegpt",
        "sharegpt",
    ]
    assert detect_format({"text": "raw"}) is None and detect_format(["not", "a", "dict"]) is None


def test_alpaca_system_field():
    assert record_to_messages({**ALPACA_NO_INPUT, "system": "Be kind."})[0] == ("system", "Be kind.")


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_mixed_shapes_detected_per_record(suffix, write_json):
    path = write_json("mixed" + suffix, [RECORDS[s] for s in sorted(RECORDS)])
    conversations, report = load_conversations(path)
    assert [pairs(c) for c in conversations] == [EXPECTED[s] for s in sorted(RECORDS)]
    assert [c.id for c in conversations] == ["0", "1", "2", "3", "s1"]
    assert not report.issues


def test_forced_format(write_json):
    path = write_json("data.jsonl", [SHAREGPT, OPENAI])
    conversations, report = load_conversations(path, data_format="sharegpt", skip_bad=True)
    assert [c.id for c in conversations] == ["s1"]
    [issue] = report.errors
    assert (issue.reason, issue.index, issue.line) == ("unknown_shape", 1, 2)
    conversations, _ = load_conversations(path, data_format="openai", skip_bad=True)
    assert [pairs(c) for c in conversations] == [EXPECTED["openai"]]
    with pytest.raises(ValueError, match="unknown data_format 'csv'"):
        record_to_messages(SHAREGPT, "csv")


def test_json_wrappers_and_single_objects(tmp_path, write_json):
    wrapped = write_json("wrapped.json", {"version": 2, "data": [SHAREGPT, OPENCHAT]})
    assert [c.id for c in load_conversations(wrapped)[0]] == ["s1", "1"]
    single = write_json("single.json", SHAREGPT)
    assert [pairs(c) for c in load_conversations(single)[0]] == [EXPECTED["sharegpt"]]


def test_json_suffix_holding_json_lines(write_json):
    path = write_json("lines.json", [SHAREGPT, OPENCHAT], jsonl=True)
    conversations, _ = load_conversations(path)
    assert [c.id for c in conversations] == ["s1", "1"]
    assert [r.line for r in iter_records(path)] == [1, 2]


def test_parquet(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_list([ALPACA, ALPACA_NO_INPUT]).to_parquet(str(path))
    conversations, report = load_conversations(path)
    assert [pairs(c) for c in conversations] == [EXPECTED["alpaca"], EXPECTED["alpaca_no_input"]]
    assert conversations[1].source == f"{path}#1"


def test_save_to_disk_dirs(tmp_path):
    import datasets

    rows = [SHAREGPT, {**SHAREGPT, "id": "s2"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "plain"))
    assert [c.id for c in load_conversations(tmp_path / "plain")[0]] == ["s1", "s2"]
    split = datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows[:1]), "train": datasets.Dataset.from_list(rows)}
    )
    split.save_to_disk(str(tmp_path / "splits"))
    assert [c.id for c in load_conversations(tmp_path / "splits")[0]] == ["s1", "s2"]  # the train split


def test_bad_record_in_a_table_is_reported(tmp_path):
    import datasets

    bad = {
        "id": "b",
        "conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hello"}],
    }
    datasets.Dataset.from_list([SHAREGPT, bad]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"record 1 \(id b\): unknown_role"):
        load_conversations(tmp_path / "ds")


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_conversations(tmp_path / "missing.json")
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_conversations(path)
