"""`llama-sft data validate|stats|inspect` and `llama-sft templates`, through the real entry point."""

from __future__ import annotations

import json

import pytest

from llama_sft.cli.main import main
from llama_sft.data.encode import IGNORE_INDEX
from llama_sft.data.templates import BUILTIN
from llama_sft.data.validate import load_conversations

GOOD = {
    "id": "g",
    "conversations": [{"from": "human", "value": "What is 2 + 3?"}, {"from": "gpt", "value": "5"}],
}
LONG = {"id": "long", "conversations": [{"from": "human", "value": "Hi"},
                                        {"from": "gpt", "value": "The quick brown fox jumps over the lazy dog. " * 10}]}  # fmt: skip
BAD_ROLE = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "beep"}]}


@pytest.fixture
def good_file(write_json):
    return write_json("good.jsonl", [GOOD, LONG])


@pytest.fixture
def bad_file(write_json):
    return write_json("bad.jsonl", [GOOD, BAD_ROLE])


# --- data validate -----------------------------------------------------------------------------------


def test_validate_good_file(good_file, capsys):
    assert main(["data", "validate", str(good_file)]) == 0
    err = capsys.readouterr().err
    assert "2 records read, 2 usable" in err


def test_validate_bad_file(bad_file, capsys):
    assert main(["data", "validate", str(bad_file)]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad_file}:2 record 1: unknown_role turn 1 has role 'robot'" in err
    assert "2 records read, 1 usable" in err


def test_validate_json_lists_every_issue(bad_file, capsys):
    assert main(["data", "validate", str(bad_file), "--json"]) == 1
    [issue] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {k: issue[k] for k in ("file", "index", "line", "reason", "severity")} == {
        "file": str(bad_file), "index": 1, "line": 2, "reason": "unknown_role", "severity": "error"}  # fmt: skip


def test_validate_strict_and_invalid_utf8(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    trailing_user = {"conversations": [*GOOD["conversations"], {"from": "human", "value": "Thanks"}]}
    path.write_bytes(json.dumps(trailing_user).encode() + b"\n" + b'{"conversations": "\xff\xfe"}\n')
    assert main(["data", "validate", str(path), "--json"]) == 1
    issues = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i["reason"], i["severity"], i["line"]) for i in issues] == [("trailing_user_dropped", "warning", 1),
                                                                         ("invalid_utf8", "error", 2)]  # fmt: skip
    assert main(["data", "validate", str(path), "--json", "--strict"]) == 1
    issues = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i["reason"], i["severity"]) for i in issues] == [
        ("trailing_user_dropped", "error"),
        ("invalid_utf8", "error"),
    ]


def test_validate_with_tokenizer_reports_lengths(good_file, capsys):
    assert (
        main(
            ["data", "validate", str(good_file), "--tokenizer", "tiny", "--model_max_length", "64", "--json"]
        )
        == 0
    )
    issues = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(i["reason"], i["index"], i["record_id"]) for i in issues] == [("truncated", 1, "long")]


def test_validate_missing_file(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope.json")]) == 2
    assert "error: data file not found" in capsys.readouterr().err


# --- data stats --------------------------------------------------------------------------------------


def test_stats_json_and_histogram(good_file, tmp_path, capsys):
    plot = tmp_path / "lengths.png"
    assert (
        main(
            [
                "data",
                "stats",
                str(good_file),
                "--tokenizer",
                "tiny",
                "--json",
                "--plot",
                str(plot),
                "--model_max_length",
                "64",
            ]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats["histogram"] == str(plot)
    assert (stats["records_read"], stats["conversations"], stats["truncated"], stats["model_max_length"]) == (
        2,
        2,
        1,
        64,
    )
    assert stats["length_max"] == 64 and stats["turns_mean"] == 2.0
    assert 0 < stats["supervised_tokens"] < stats["tokens"]
    assert stats["supervised_share"] == round(stats["supervised_tokens"] / stats["tokens"], 4)
    assert {
        "p50",
        "p90",
        "p95",
        "p99",
        "length_mean",
        "no_supervised_tokens",
        "skipped_records",
    } <= stats.keys()


def test_stats_table(good_file, tmp_path, capsys):
    assert main(["data", "stats", str(good_file), "--tokenizer", "tiny", "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert "supervised_share" in out and "vicuna_v1.1" in out
    assert not (tmp_path / "length_histogram.png").exists()


def test_stats_skip_bad_counts(bad_file, capsys):
    assert (
        main(["data", "stats", str(bad_file), "--tokenizer", "tiny", "--json", "--plot", "", "--skip_bad"])
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert (stats["records_read"], stats["conversations"], stats["skipped_records"]) == (2, 1, 1)


def test_stats_bad_file_stops(bad_file, capsys):
    assert main(["data", "stats", str(bad_file), "--tokenizer", "tiny", "--json", "--plot", ""]) == 2
    assert "unknown_role" in capsys.readouterr().err


# --- data inspect ------------------------------------------------------------------------------------


def test_inspect_marks_supervised_text_when_piped(good_file, capsys):
    assert main(["data", "inspect", "--tokenizer", "tiny", str(good_file), "--index", "0"]) == 0
    out = capsys.readouterr().out
    assert "USER: What is 2 + 3? ASSISTANT:« 5</s>»" in out
    assert "record 0 (id g)" in out and "«…» = trained" in out


def test_inspect_sample_and_other_template(capsys):
    assert (
        main(["data", "inspect", "--tokenizer", "tiny", "--index", "0:2", "--conv_template", "llama-2"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("── record") == 2 and "[/INST]« " in out


def test_inspect_json(good_file, capsys, tiny_tokenizer):
    assert (
        main(
            [
                "data",
                "inspect",
                "--tokenizer",
                "tiny",
                str(good_file),
                "--index",
                "all",
                "--json",
                "--masking",
                "train_on_all",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["index"], r["id"]) for r in rows] == [(0, "g"), (1, "long")]
    for row in rows:
        assert row["input_ids"] == tiny_tokenizer(row["text"], add_special_tokens=False).input_ids
        assert row["labels"] == row["input_ids"]  # train_on_all
    assert main(["data", "inspect", "--tokenizer", "tiny", str(good_file), "--index", "0", "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["text"] == BUILTIN["vicuna_v1.1"].render(load_conversations(good_file)[0][0].messages).text
    supervised = [label for label in row["labels"] if label != IGNORE_INDEX]
    assert tiny_tokenizer.convert_ids_to_tokens(supervised) == ["▁", "5", "</s>"]


def test_inspect_index_out_of_range_is_a_clean_error(good_file, capsys):
    assert main(["data", "inspect", "--tokenizer", "tiny", str(good_file), "--index", "9"]) == 2
    assert "--index 9 is out of range" in capsys.readouterr().err


# --- templates ---------------------------------------------------------------------------------------


def test_templates_lists_every_builtin(capsys):
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN:
        assert name in out
    assert "USER: Hi! ASSISTANT:« Hello.</s>»" in out
    assert "<|im_start|>assistant\n«4<|im_end|>»" in out


def test_templates_one_with_jinja(capsys):
    assert main(["templates", "chatml", "--jinja"]) == 0
    out = capsys.readouterr().out
    assert "<|im_start|>assistant\n«4<|im_end|>»" in out
    assert "add_generation_prompt" in out and "raise_exception" in out  # the exported HF chat_template
    assert "vicuna" not in out


def test_templates_validates_a_user_file(tmp_path, capsys):
    good = tmp_path / "qa.yaml"
    good.write_text(
        'user_format: "Q: {content}\\n"\ngeneration_prompt: "A:"\nassistant_format: " {content}{eos}\\n"\n'
    )
    assert main(["templates", str(good)]) == 0
    assert "Q: Hi!\nA:« Hello.</s>\n»" in capsys.readouterr().out
    bad = tmp_path / "typo.yaml"
    bad.write_text('user_fromat: "Q: {content}\\n"\n')
    assert main(["templates", str(bad)]) == 2
    assert "did you mean 'user_format'" in capsys.readouterr().err
