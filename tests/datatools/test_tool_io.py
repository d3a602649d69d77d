"""Streaming input, safe output and the shared command-line behaviour of the data tools."""

from __future__ import annotations

import pytest
from ci import require_module
from dt_helpers import counts, read_jsonl, sharegpt

from llama_sft.data.formats import iter_jsonl as reference_iter_jsonl
from llama_sft.datatools.stream import iter_jsonl, stream_records

GOOD = sharegpt("g", ("human", "q"), ("gpt", "a"))


def test_jsonl_reader_matches_the_training_reader(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \n{bad json\n{"b": "\xff\xfe"}\n{"c": "\\u00e9"}\n')
    ours = [(r.index, r.line, r.data, r.error.reason if r.error else None) for r in iter_jsonl(path)]
    theirs = [
        (r.index, r.line, r.data, r.error.reason if r.error else None) for r in reference_iter_jsonl(path)
    ]
    assert (
        ours
        == theirs
        == [
            (0, 1, {"a": 1}, None),
            (1, 4, None, "malformed_json"),
            (2, 5, None, "invalid_utf8"),
            (3, 6, {"c": "é"}, None),
        ]
    )


def test_json_named_jsonl_and_truncated_array(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text('{"id": 1}\n{"id": 2}\n')
    assert [r.data for r in stream_records(lines)] == [{"id": 1}, {"id": 2}]
    require_module("ijson")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1}, {"id": 2}, {"id": ')
    found = list(stream_records(broken))
    assert [r.data for r in found[:2]] == [{"id": 1}, {"id": 2}] and found[2].error.reason == "malformed_json"


def test_in_place_output_and_lone_surrogates(cli, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"id": "s", "conversations": [{"from": "human", "value": "x\\ud800 "}, {"from": "gpt", "value": "a"}]}\n'
    )
    code, report, _ = cli("clean", path, "-o", path)
    assert code == 0 and counts(report) == {"whitespace_normalized": 1}
    assert read_jsonl(path) == [sharegpt("s", ("human", "x\ud800"), ("gpt", "a"))]
    assert "\\ud800" in path.read_text()  # written as an escape, the file stays valid UTF-8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "report.json"]


def test_missing_input_and_output(cli, jsonl, tmp_path):
    code, _, err = cli("clean", tmp_path / "nope.jsonl", "-o", tmp_path / "out.jsonl")
    assert code == 2 and "data file not found" in err and not (tmp_path / "out.jsonl").exists()
    code, _, err = cli("dedupe", jsonl("in.jsonl", [GOOD]))
    assert code == 2 and "give -o/--output" in err
    code, _, err = cli("clean", jsonl("in.txt", [GOOD]), "-o", tmp_path / "o.jsonl")
    assert code == 2 and "unsupported file type" in err


def test_a_crash_leaves_no_partial_output(cli, jsonl, tmp_path, monkeypatch):
    from llama_sft.datatools import clean

    def boom(self, chat):
        raise RuntimeError("boom")

    monkeypatch.setattr(clean.Cleaner, "clean", boom)
    with pytest.raises(RuntimeError):
        cli("clean", jsonl("in.jsonl", [GOOD, GOOD]), "-o", tmp_path / "out.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_help_lists_every_tool(capsys):
    from llama_sft.cli.main import main

    assert main(["data"]) == 0
    text = capsys.readouterr().out
    for name in ("clean", "split-long", "dedupe", "convert", "mix", "split"):
        assert name in text
        with pytest.raises(SystemExit) as exit_info:
            main(["data", name, "--help"])
        assert exit_info.value.code == 0
        shown = capsys.readouterr().out
        if name == "clean":  # both spellings of multi-word flags are accepted and shown
            assert "--drop-pattern" in shown and "--drop_pattern" in shown
