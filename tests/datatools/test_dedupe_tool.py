"""`llama-sft data dedupe`: exact duplicates by normalized content, near duplicates by MinHash."""

from __future__ import annotations

import random

from dt_helpers import counts, read_jsonl, sharegpt

from llama_sft.datatools.dedupe import (
    DedupeOptions,
    Deduper,
    HashIndex,
    PackedStrings,
    content_key,
    near_text,
    shingles,
)
from llama_sft.datatools.records import Chat, Turn


def text(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(f"w{rng.randrange(5000)}" for _ in range(n))


def one_word_changed(s: str) -> str:
    words = s.split()
    words[len(words) // 2] = "CHANGED"
    return " ".join(words)


RECORDS = [
    sharegpt("a", ("human", text(1)), ("gpt", text(2))),
    sharegpt("b", ("human", text(3)), ("gpt", text(4))),
    sharegpt("a-copy", ("human", text(1).upper()), ("gpt", "  " + text(2).replace(" ", "  \n", 3))),
    sharegpt("b-near", ("human", text(3)), ("gpt", one_word_changed(text(4)))),
    sharegpt("a-sys", ("system", "Be brief."), ("human", text(1)), ("gpt", text(2))),
    sharegpt("c", ("human", text(5)), ("gpt", text(6))),
    sharegpt(
        "half", ("human", text(3)), ("gpt", text(7))
    ),  # shares only the question with b: about 1/3 similar
    sharegpt("a-copy2", ("human", text(1)), ("gpt", text(2))),
]


def test_dedupe_exact_and_near_with_clusters(cli, jsonl, tmp_path):
    out, clusters = tmp_path / "out.jsonl", tmp_path / "clusters.jsonl"
    code, report, err = cli("dedupe", jsonl("in.jsonl", RECORDS), "-o", out, "--clusters", clusters)
    assert code == 0
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c", "half"]
    assert read_jsonl(out)[0] == RECORDS[0]
    assert counts(report) == {"exact_duplicate": 2, "near_duplicate": 2}
    found = read_jsonl(clusters)
    assert [(c["kept"], c["duplicate"], c["kind"]) for c in found] == [
        ("a", "a-copy", "exact"),
        ("b", "b-near", "near"),
        ("a", "a-sys", "near"),
        ("a", "a-copy2", "exact"),
    ]
    assert found[2]["similarity"] == 1.0 and 0.8 <= found[1]["similarity"] < 1.0
    assert report["dedupe"]["clusters"] == 2
    assert report["dedupe"]["largest_clusters"][0] == {
        "kept": "a",
        "size": 4,
        "duplicates": ["a-copy", "a-sys", "a-copy2"],
    }
    rows = {row["reason"]: row for row in report["reasons"]}
    assert rows["near_duplicate"]["examples"] == ["b-near (= b)", "a-sys (= a)"]
    assert "keeps a, drops a-copy, a-sys, a-copy2" not in err  # --quiet hides the cluster listing


def test_exact_only_and_threshold(cli, jsonl, tmp_path):
    out = tmp_path / "out.jsonl"
    code, report, _ = cli("dedupe", jsonl("in.jsonl", RECORDS), "-o", out, "--exact-only")
    assert code == 0 and counts(report) == {"exact_duplicate": 2}
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "b-near", "a-sys", "c", "half"]
    code, report, _ = cli("dedupe", jsonl("in.jsonl", RECORDS), "-o", out, "--threshold", "0.3")
    assert counts(report) == {"exact_duplicate": 2, "near_duplicate": 3}  # "half" is now close enough to b


def test_normalization_and_features():
    chat = Chat("x", [Turn("system", "S"), Turn("user", "Hello   World"), Turn("assistant", "Hi\nthere")])
    same = Chat("y", [Turn("system", "S"), Turn("user", "hello world"), Turn("assistant", " hi there ")])
    assert content_key(chat) == content_key(same)
    assert content_key(chat) != content_key(Chat("z", same.turns[1:]))  # the system prompt counts for exact
    assert near_text(chat, 2000) == "hello world hi there"  # ...but not for near
    assert near_text(chat, 8) == "hello wo"
    assert sorted(shingles("a b c d", 3)) == [b"a b c", b"b c d"] and shingles("a b", 3) == [b"a b"]


def test_deduper_is_deterministic_across_instances():
    chats = [Chat(str(i), [Turn("user", text(i)), Turn("assistant", text(i + 100))]) for i in range(30)]
    chats += [
        Chat(f"n{i}", [Turn("user", text(i)), Turn("assistant", one_word_changed(text(i + 100)))])
        for i in range(30)
    ]
    results = []
    for _ in range(2):
        deduper = Deduper(DedupeOptions())
        results.append([deduper.check(c) for c in chats])
    assert results[0] == results[1]
    assert [m.kept for m in results[0][30:]] == list(range(30))


def test_compact_index_and_strings():
    rng = random.Random(0)
    keys = [rng.getrandbits(64) for _ in range(5000)] + [0, -1, -(2**63)]
    index = HashIndex(capacity=8)
    for n, key in enumerate(keys):
        assert index.setdefault(key, n) == n
    assert len(index) == len(keys) and all(index.get(k) == n for n, k in enumerate(keys))
    assert index.setdefault(keys[10], 99) == 10 and index.get(12345) == -1
    ids = PackedStrings()
    for word in ["a", "", "ünï", "x" * 100]:
        ids.append(word)
    assert [ids[i] for i in range(len(ids))] == ["a", "", "ünï", "x" * 100]
