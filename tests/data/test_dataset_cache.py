"""build_dataset: tokenized once, cached under a key that covers everything that changes ids or labels."""

from __future__ import annotations

import pytest

from llama_sft.data.dataset import build_dataset, default_cache_dir
from llama_sft.data.encode import IGNORE_INDEX
from llama_sft.data.issues import DataError
from llama_sft.data.templates import BUILTIN

VICUNA = BUILTIN["vicuna_v1.1"]


def conv(user: str, reply: str, **extra) -> dict:
    return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": reply}], **extra}


RECORDS = [conv("What is 2 + 3?", "5", id="a"), conv("Hello there", "Hi! How can I help you today?", id="b")]


@pytest.fixture
def data(write_json):
    return write_json("train.jsonl", RECORDS)


def build(paths, tokenizer, template=VICUNA, max_length=256, strategy="train_on_assistant", **kw):
    return build_dataset(
        [paths] if not isinstance(paths, list) else paths, tokenizer, template, max_length, strategy, **kw
    )


def test_second_call_is_a_cache_hit(data, tiny_tokenizer, tmp_path):
    dataset, report, stats = build(data, tiny_tokenizer)
    assert stats["cache"] == "miss"
    assert stats["cache_path"].startswith(str(default_cache_dir())) and str(tmp_path) in stats["cache_path"]
    again, report2, stats2 = build(data, tiny_tokenizer)
    assert stats2["cache"] == "hit" and stats2["cache_path"] == stats["cache_path"]
    assert again["input_ids"] == dataset["input_ids"] and again["labels"] == dataset["labels"]
    assert again["id"] == ["a", "b"] and again["length"] == [len(x) for x in again["input_ids"]]
    assert (report2.records_read, report2.records_kept) == (2, 2)
    assert {k: v for k, v in stats2.items() if k not in ("cache",)} == {
        k: v for k, v in stats.items() if k != "cache"
    }
    assert stats["conversations"] == 2 and 0 < stats["supervised_tokens"] < stats["tokens"]


def test_rows_are_the_encoded_conversations(data, tiny_tokenizer):
    dataset, _, _ = build(data, tiny_tokenizer, use_cache=False)
    row = dataset[0]
    tokens = tiny_tokenizer.convert_ids_to_tokens([x for x in row["labels"] if x != IGNORE_INDEX])
    assert tokens == ["▁", "5", "</s>"]


def test_key_changes_with_what_changes_the_rows(data, tiny_tokenizer, write_json):
    base = build(data, tiny_tokenizer)[2]["cache_path"]
    variants = {
        "template": build(data, tiny_tokenizer, template=BUILTIN["llama-2"]),
        "max_length": build(data, tiny_tokenizer, max_length=128),
        "strategy": build(data, tiny_tokenizer, strategy="train_on_all"),
        "skip_bad": build(data, tiny_tokenizer, skip_bad=True),
    }
    paths = {name: stats["cache_path"] for name, (_, _, stats) in variants.items()}
    assert all(stats["cache"] == "miss" for _, _, stats in variants.values())
    assert len({base, *paths.values()}) == 5
    # same file name, new content
    write_json("train.jsonl", [*RECORDS, conv("One more", "Sure.")])
    dataset, _, stats = build(data, tiny_tokenizer)
    assert stats["cache"] == "miss" and stats["cache_path"] != base and len(dataset) == 3


def test_truncation_is_counted_and_survives_the_cache(write_json, tiny_tokenizer):
    path = write_json(
        "long.jsonl",
        [RECORDS[0], conv("Hi", "The quick brown fox jumps over the lazy dog. " * 10, id="long")],
    )
    _, report, stats = build(path, tiny_tokenizer, max_length=64)
    assert stats["truncated"] == 1 and stats["cache"] == "miss"
    [issue] = report.issues
    assert (issue.reason, issue.file, issue.index, issue.record_id) == ("truncated", str(path), 1, "long")
    dataset, report, stats = build(path, tiny_tokenizer, max_length=64)
    assert stats["cache"] == "hit" and stats["truncated"] == 1
    assert [(i.reason, i.index) for i in report.issues] == [("truncated", 1)]
    assert max(dataset["length"]) == 64


def test_no_supervised_token_left_is_an_error(write_json, tiny_tokenizer):
    path = write_json(
        "prompt.jsonl", [RECORDS[0], conv("The quick brown fox jumps over the lazy dog. " * 20, "5", id="p")]
    )
    with pytest.raises(DataError, match=r"prompt.jsonl record 1 \(id p\): no_supervised_tokens"):
        build(path, tiny_tokenizer, max_length=64)
    dataset, report, stats = build(path, tiny_tokenizer, max_length=64, skip_bad=True)
    assert dataset["id"] == ["a"]
    assert (stats["dropped_no_supervised"], stats["truncated"], stats["conversations"]) == (1, 1, 1)
    assert report.skipped_ids == ["p"]


def test_bad_records_stop_the_build_unless_skipped(write_json, tiny_tokenizer):
    path = write_json("bad.jsonl", [RECORDS[0], {"conversations": [{"from": "robot", "value": "beep"}]}])
    with pytest.raises(DataError, match="unknown_role"):
        build(path, tiny_tokenizer)
    dataset, report, _ = build(path, tiny_tokenizer, skip_bad=True)
    assert len(dataset) == 1 and report.counts("error") == {"unknown_role": 1}


def test_nothing_usable(write_json, tiny_tokenizer):
    path = write_json("empty.jsonl", [{"conversations": [{"from": "human", "value": "Hi"}]}])
    with pytest.raises(DataError, match="no_assistant_turn"):
        build(path, tiny_tokenizer, skip_bad=True)


def test_skipped_records_are_still_counted_on_a_cache_hit(write_json, tiny_tokenizer):
    path = write_json(
        "bad.jsonl", [RECORDS[0], {"id": "r", "conversations": [{"from": "robot", "value": "beep"}]}]
    )
    _, first, _ = build(path, tiny_tokenizer, skip_bad=True)
    _, second, stats = build(path, tiny_tokenizer, skip_bad=True)
    assert stats["cache"] == "hit"
    assert second.skipped_ids == first.skipped_ids == ["r"]


def test_key_changes_with_the_tokenizers_eos_text(data, tiny_tokenizer):
    """Setting eos_token (as people do for Llama-3 instruct) changes what {eos} renders."""
    import copy

    other = copy.deepcopy(tiny_tokenizer)
    other.eos_token = "<|im_end|>"
    first, _, stats = build(data, tiny_tokenizer)
    second, _, stats2 = build(data, other)
    assert stats2["cache"] == "miss" and stats2["cache_path"] != stats["cache_path"]
    assert second["labels"][0][-1] == other.convert_tokens_to_ids("<|im_end|>") != first["labels"][0][-1]


def test_parallel_encoding_equals_serial(write_json, tiny_tokenizer):
    records = [conv(f"What is {n} + 3?", f"{n + 3}", id=f"c{n}") for n in range(2001)]
    path = write_json("many.jsonl", records)
    serial, _, _ = build(path, tiny_tokenizer, use_cache=False)
    parallel, _, stats = build(path, tiny_tokenizer, use_cache=False, num_workers=2)
    assert parallel["id"] == serial["id"]
    assert parallel["input_ids"] == serial["input_ids"] and parallel["labels"] == serial["labels"]
    assert stats["conversations"] == 2001
