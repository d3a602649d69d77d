"""One test per issue reason, each pointing at the file, record and line; then the policies."""

from __future__ import annotations

import json

import pytest
from tool_cases import TOOL_RECORD_CASES

from llama_sft.data.dataset import encode_with_report
from llama_sft.data.issues import (
    ALL_REASONS,
    ERROR_REASONS,
    REPAIR_REASONS,
    WARNING_REASONS,
    DataError,
    ValidationReport,
)
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN
from llama_sft.data.validate import load_conversations


def sharegpt(*turns, **extra) -> dict:
    return {"conversations": [{"from": role, "value": value} for role, value in turns], **extra}


GOOD = sharegpt(("human", "What is 2 + 3?"), ("gpt", "5"), id="good")
# reason -> (a bad record, expected severity)
RECORD_CASES = {
    "unknown_shape": ({"prompt": "Hi", "completion": "Hello"}, "error"),
    "unknown_role": (sharegpt(("human", "Hi"), ("robot", "Hello")), "error"),
    "empty_content": (sharegpt(("human", "  \n"), ("gpt", "Hello")), "error"),
    "non_string_content": (sharegpt(("human", "Hi"), ("gpt", 42)), "error"),
    "misplaced_system": (sharegpt(("human", "Hi"), ("system", "Be brief."), ("gpt", "Hello")), "error"),
    "not_alternating": (sharegpt(("human", "Hi"), ("human", "Hi again"), ("gpt", "Hello")), "error"),
    "no_assistant_turn": (sharegpt(("system", "Be brief."), ("human", "Hi")), "error"),
    "leading_assistant_dropped": (
        sharegpt(("gpt", "Welcome!"), ("human", "Hi"), ("gpt", "Hello")),
        "warning",
    ),
    "trailing_user_dropped": (sharegpt(("human", "Hi"), ("gpt", "Hello"), ("human", "Bye")), "warning"),
    "control_string": (sharegpt(("human", "What does </s> mean?"), ("gpt", "End of sequence.")), "warning"),
}
RECORD_CASES.update(TOOL_RECORD_CASES)  # tool-calling reasons (data/tools.py)
RAW_CASES = {  # reasons found before a record can be parsed: (JSONL line bytes, JSON file bytes)
    "malformed_json": (b'{"conversations": [\n', b'[{"conversations": []},\n {"conversations": [}\n]'),
    "invalid_utf8": (
        b'{"conversations": [{"from": "human", "value": "caf\xe9"}, {"from": "gpt", "value": "ok"}]}\n',
        b'[{"items": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},\n'
        b' {"items": [{"from": "human", "value": "caf\xe9"}, {"from": "gpt", "value": "ok"}]}]',
    ),
}
ENCODE_CASES = ("truncated", "no_supervised_tokens")  # need a tokenizer: tested below
# Also need a tokenizer: tests/data/test_boundary_report.py, tests/data/test_special_content.py
ENCODE_CASES += ("boundary_token", "special_token_in_content")


def test_every_reason_has_a_test():
    assert set(RECORD_CASES) | set(RAW_CASES) | set(ENCODE_CASES) == set(ALL_REASONS)
    assert set(ALL_REASONS) == set(ERROR_REASONS) | set(REPAIR_REASONS) | set(WARNING_REASONS)


def write_jsonl(path, lines: list[bytes]):
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.parametrize("reason", sorted(RECORD_CASES))
def test_record_reason_jsonl(reason, tmp_path):
    bad, severity = RECORD_CASES[reason]
    # record 0 on line 1, a blank line, record 1 (the bad one) on line 3
    path = write_jsonl(
        tmp_path / "data.jsonl", [json.dumps(GOOD).encode() + b"\n", b"\n", json.dumps(bad).encode() + b"\n"]
    )
    conversations, report = load_conversations(path, skip_bad=True)
    [issue] = [i for i in report.issues if i.reason == reason]
    assert (issue.file, issue.index, issue.line, issue.severity) == (str(path), 1, 3, severity)
    assert f"{path}:3 record 1" in str(issue)
    assert report.records_read == 2
    assert len(conversations) == (1 if severity == "error" else 2)
    assert REPAIR_REASONS.get(reason) is None or severity == "warning"


@pytest.mark.parametrize("reason", sorted(RECORD_CASES))
def test_record_reason_json(reason, tmp_path):
    bad, severity = RECORD_CASES[reason]
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, {**bad, "id": "r-7"}]), encoding="utf-8")
    _, report = load_conversations(path, skip_bad=True)
    [issue] = [i for i in report.issues if i.reason == reason]
    assert (issue.file, issue.index, issue.line, issue.record_id) == (str(path), 1, None, "r-7")
    assert issue.location() == f"{path} record 1 (id r-7)"


@pytest.mark.parametrize("reason", sorted(RAW_CASES))
def test_raw_reason_jsonl(reason, tmp_path):
    line, _ = RAW_CASES[reason]
    path = write_jsonl(tmp_path / "data.jsonl", [json.dumps(GOOD).encode() + b"\n", line])
    conversations, report = load_conversations(path, skip_bad=True)
    [issue] = report.issues
    assert (issue.reason, issue.file, issue.index, issue.line, issue.severity) == (
        reason,
        str(path),
        1,
        2,
        "error",
    )
    assert [c.id for c in conversations] == ["good"]


def test_malformed_json_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(RAW_CASES["malformed_json"][1])
    _, report = load_conversations(path, skip_bad=True)
    [issue] = report.issues
    # Nothing in a broken JSON document can be trusted: the whole file is one error, at the line it broke.
    assert (issue.reason, issue.file, issue.line) == ("malformed_json", str(path), 2)


def test_invalid_utf8_json_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(RAW_CASES["invalid_utf8"][1])
    _, report = load_conversations(path, skip_bad=True)
    # The rest of the file is still read: only the record holding the bad bytes is lost.
    assert [(i.reason, i.index, i.line) for i in report.issues] == [("invalid_utf8", 1, None)]
    assert report.records_kept == 1


def test_top_level_that_is_not_a_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('"just a string"', encoding="utf-8")
    _, report = load_conversations(path, skip_bad=True)
    assert [i.reason for i in report.issues] == ["unknown_shape"]


def test_strict_turns_repairs_into_errors(tmp_path, write_json):
    path = write_json(
        "data.jsonl",
        [GOOD, RECORD_CASES["leading_assistant_dropped"][0], RECORD_CASES["trailing_user_dropped"][0]],
    )
    conversations, report = load_conversations(path)
    assert len(conversations) == 3 and not report.errors
    with pytest.raises(DataError) as info:
        load_conversations(path, strict=True)
    errors = info.value.report.errors
    assert [(i.reason, i.index, i.line) for i in errors] == [
        ("leading_assistant_dropped", 1, 2),
        ("trailing_user_dropped", 2, 3),
    ]
    assert "--strict" in errors[0].detail
    conversations, report = load_conversations(path, strict=True, skip_bad=True)
    assert [c.id for c in conversations] == ["good"] and len(report.skipped_ids) == 2


def test_default_policy_raises_listing_every_error(tmp_path):
    bad = [RECORD_CASES[r][0] for r in ("unknown_shape", "unknown_role", "not_alternating")]
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [json.dumps(r).encode() + b"\n" for r in [GOOD, *bad]] + [RAW_CASES["invalid_utf8"][0]],
    )
    with pytest.raises(DataError) as info:
        load_conversations(path)
    message = str(info.value)
    for n, reason in enumerate(["unknown_shape", "unknown_role", "not_alternating", "invalid_utf8"], start=1):
        assert f"error: {path}:{n + 1} record {n}: {reason}" in message
    assert "4 error(s), 0 warning(s) in 5 record(s)" in message
    assert "--skip_bad" in message
    assert len(info.value.report.errors) == 4


def test_skip_bad_counts_what_it_skipped(tmp_path, write_json):
    records = [GOOD, RECORD_CASES["unknown_role"][0], {**RECORD_CASES["empty_content"][0], "id": "e1"}, GOOD]
    path = write_json("data.json", records)
    conversations, report = load_conversations(path, skip_bad=True)
    assert len(conversations) == 2
    assert (report.records_read, report.records_kept) == (4, 2)
    assert report.skipped_ids == ["1", "e1"]
    assert report.counts("error") == {"unknown_role": 1, "empty_content": 1}
    rows = {reason: (count, examples) for _, reason, count, examples in report.summary_rows()}
    assert rows["unknown_role"] == (1, [f"{path} record 1"])


def test_many_files_are_one_report(tmp_path, write_json):
    a = write_json("a.json", [GOOD])
    b = write_json("b.jsonl", [GOOD, RECORD_CASES["unknown_role"][0]])
    conversations, report = load_conversations([a, b], skip_bad=True)
    assert [c.source for c in conversations] == [f"{a}#0", f"{b}#0"]
    assert [(i.file, i.index) for i in report.errors] == [(str(b), 1)]


def test_format_truncates_long_lists():
    report = ValidationReport(records_read=30)
    from llama_sft.data.issues import Issue

    for n in range(25):
        report.add(Issue("f.jsonl", n, "unknown_role", line=n + 1))
    text = report.format(shown=20)
    assert "... and 5 more" in text and "25 error(s)" in text


# --- reasons found while encoding --------------------------------------------------------------------


def test_truncated_and_no_supervised_tokens(tiny_tokenizer):
    long_reply = Conversation([Message("user", "Hi"), Message("assistant", "The quick brown fox " * 20)], id="long",
                              source="data.jsonl#3")  # fmt: skip
    long_prompt = Conversation([Message("user", "The quick brown fox " * 40), Message("assistant", "5")], id="p",
                               source="data.jsonl#4")  # fmt: skip
    report = ValidationReport()
    rows, stats = encode_with_report([long_reply, long_prompt], BUILTIN["vicuna_v1.1"], tiny_tokenizer, 64,
                                     "train_on_assistant", report)  # fmt: skip
    assert [(i.reason, i.file, i.index, i.record_id, i.severity) for i in report.issues] == [
        ("truncated", "data.jsonl", 3, "long", "warning"),
        ("truncated", "data.jsonl", 4, "p", "warning"),
        ("no_supervised_tokens", "data.jsonl", 4, "p", "error"),
    ]
    assert "model_max_length 64" in report.issues[0].detail
    assert [r["id"] for r in rows] == ["long"] and rows[0]["length"] == 64
    assert (stats.truncated, stats.dropped_no_supervised, stats.conversations) == (2, 1, 1)
    assert report.skipped_ids == ["p"]
