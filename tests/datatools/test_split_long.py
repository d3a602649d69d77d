"""`llama-sft data split-long`: pieces of whole rounds that fit N tokens as the template renders them."""

from __future__ import annotations

import random

import pytest
from dt_helpers import counts, read_jsonl, sharegpt

from llama_sft.data.messages import Message
from llama_sft.data.templates import SpecialText, get_template
from llama_sft.datatools.records import Chat, Turn
from llama_sft.datatools.split_long import Splitter

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly boxes".split()


def make_chat(rid: str, n_rounds: int, seed: int, system: str | None = None, words=(3, 40)) -> Chat:
    rng = random.Random(seed)
    turns = [Turn("system", system)] if system else []
    for r in range(n_rounds):
        turns.append(Turn("user", f"q{r} " + " ".join(rng.choices(WORDS, k=rng.randint(*words)))))
        turns.append(Turn("assistant", f"a{r} " + " ".join(rng.choices(WORDS, k=rng.randint(*words)))))
    return Chat(rid, turns)


def split(splitter: Splitter, chat: Chat):
    system = chat.system
    dialogue = chat.dialogue
    return splitter.split_batch([(chat, system, list(zip(dialogue[0::2], dialogue[1::2], strict=True)))])[0]


def exact_count(tokenizer, template, turns: list[Turn]) -> int:
    text = template.render(
        [Message(t.role, t.content) for t in turns], special=SpecialText.from_tokenizer(tokenizer)
    ).text
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def reference_pieces(tokenizer, template, chat: Chat, max_length: int) -> list[list[Turn]]:
    """The definition, slowly: greedy from the first round, each piece as many whole rounds as fit."""
    system = [chat.system] if chat.system else []
    rounds = [chat.dialogue[k : k + 2] for k in range(0, len(chat.dialogue), 2)]
    pieces, i = [], 0
    while i < len(rounds):
        if exact_count(tokenizer, template, system + rounds[i]) > max_length:
            i += 1  # dropped
            continue
        j = i + 1
        while (
            j < len(rounds)
            and exact_count(tokenizer, template, system + sum(rounds[i : j + 1], [])) <= max_length
        ):
            j += 1
        pieces.append(system + sum(rounds[i:j], []))
        i = j
    return pieces


@pytest.mark.parametrize("template_name", ["vicuna_v1.1", "llama-2", "llama-3", "chatml", "alpaca"])
@pytest.mark.parametrize("with_system", [False, True])
def test_pieces_equal_the_slow_definition(tiny_tokenizer, template_name, with_system):
    template = get_template(template_name)
    for seed in range(4):
        chat = make_chat(f"c{seed}", n_rounds=7, seed=seed, system="Answer tersely." if with_system else None)
        for max_length in (90, 160, 300):
            splitter = Splitter(template, tiny_tokenizer, max_length)
            result = split(splitter, chat)
            expected = reference_pieces(tiny_tokenizer, template, chat, max_length)
            got = [p.turns for p in result.pieces]
            assert got == expected, (template_name, seed, max_length)
            assert all(exact_count(tiny_tokenizer, template, t) <= max_length for t in got)


def test_final_round_is_kept_and_ids_and_system(tiny_tokenizer):
    template = get_template("vicuna_v1.1")
    chat = make_chat("orig", n_rounds=5, seed=1, system="Be kind.", words=(20, 20))
    one_round = exact_count(tiny_tokenizer, template, chat.turns[:3])
    two_rounds = exact_count(tiny_tokenizer, template, chat.turns[:5])
    # Two rounds per piece: 5 rounds -> 2 + 2 + 1, and the last piece holds the last round alone.
    result = split(Splitter(template, tiny_tokenizer, two_rounds + 2), chat)
    assert one_round < two_rounds + 2 < exact_count(tiny_tokenizer, template, chat.turns[:7])
    assert [p.id for p in result.pieces] == ["orig_1", "orig_2", "orig_3"]
    assert all(
        p.meta == {"parent_id": "orig"} and p.turns[0] == Turn("system", "Be kind.") for p in result.pieces
    )
    assert [t for p in result.pieces for t in p.turns[1:]] == chat.turns[1:]  # every round, in order
    assert result.pieces[-1].turns[1:] == chat.turns[-2:]
    assert result.changes == ["split"]


def test_a_conversation_that_fits_is_untouched(tiny_tokenizer):
    chat = make_chat("small", n_rounds=2, seed=0)
    result = split(Splitter(get_template("chatml"), tiny_tokenizer, 10_000), chat)
    assert [p.id for p in result.pieces] == ["small"] and result.pieces[0] is chat and result.changes == []


def test_single_round_too_long_drop_truncate_and_prompt_too_long(tiny_tokenizer):
    template = get_template("llama-3")
    long_reply = " ".join(["wizards"] * 200)
    chat = Chat(
        "x",
        [
            Turn("user", "short q"),
            Turn("assistant", "short a"),
            Turn("user", "tell me"),
            Turn("assistant", long_reply),
            Turn("user", "last q"),
            Turn("assistant", "last a"),
        ],
    )
    max_length = 60
    dropped = split(Splitter(template, tiny_tokenizer, max_length, "drop"), chat)
    assert [p.turns for p in dropped.pieces] == [chat.turns[0:2], chat.turns[4:6]]
    assert [p.id for p in dropped.pieces] == ["x_1", "x_2"] and dropped.changes == ["split", "round_too_long"]

    cut = split(Splitter(template, tiny_tokenizer, max_length, "truncate"), chat)
    assert [p.id for p in cut.pieces] == ["x_1", "x_2", "x_3"] and cut.changes == ["split", "round_truncated"]
    user, reply = cut.pieces[1].turns
    assert (
        user == chat.turns[2]
        and long_reply.startswith(reply.content)
        and 0 < len(reply.content) < len(long_reply)
    )
    assert reply.content.endswith("wizards")  # cut at a space, not inside a word
    assert exact_count(tiny_tokenizer, template, cut.pieces[1].turns) <= max_length
    longer = Turn("assistant", reply.content + " wizards")
    assert exact_count(tiny_tokenizer, template, [user, longer]) > max_length  # as much as fits

    huge_prompt = Chat("y", [Turn("user", long_reply), Turn("assistant", "ok")])
    result = split(Splitter(template, tiny_tokenizer, max_length, "truncate"), huge_prompt)
    assert result.pieces == [] and result.dropped == "prompt_too_long"


def test_counts_match_the_tokenizer_call_used_for_training(tiny_tokenizer):
    splitter = Splitter(get_template("vicuna_v1.1"), tiny_tokenizer, 100)
    texts = ["<s>USER: hi ASSISTANT: hello</s>", "  spaced  out\n\n text ", "Héllo wörld 你好 🙂", ""]
    assert splitter.count(texts) == [
        len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    ]


def test_cli_split_long(cli, jsonl, tmp_path):
    # With the tiny tokenizer and vicuna_v1.1 one round is 111 tokens, two 212, three 313: 256 holds two.
    long = [
        ("human", f"question {r} " + "the quick brown fox " * 8)
        if k == 0
        else ("gpt", f"answer {r} " + "jumps over the lazy dog " * 8)
        for r in range(5)
        for k in range(2)
    ]
    records = [
        sharegpt("long", ("system", "Be brief."), *long),
        sharegpt("short", ("human", "hi"), ("gpt", "hello")),
        sharegpt("bad", ("human", "hi"), ("human", "again"), ("gpt", "hello")),
    ]
    src, out = jsonl("in.jsonl", records), tmp_path / "out.jsonl"
    code, report, err = cli(
        "split-long",
        src,
        "-o",
        out,
        "--tokenizer",
        "tiny",
        "--max-length",
        256,
        "--conv_template",
        "vicuna_v1.1",
    )
    assert code == 2 and not out.exists() and "not_alternating" in err  # bad input stops, nothing written
    code, report, _ = cli(
        "split-long", src, "-o", out, "--tokenizer", "tiny", "--max_length", 256, "--skip_bad"
    )
    assert code == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["long_1", "long_2", "long_3", "short"]
    assert all(r["conversations"][0] == {"from": "system", "value": "Be brief."} for r in rows[:3])
    assert [t for r in rows[:3] for t in r["conversations"][1:]] == records[0]["conversations"][1:]
    assert counts(report) == {"split": 1, "not_alternating": 1}
    assert report["split_long"]["records_split"] == 1 and report["written"] == 4


def test_jinja_template_file(tiny_tokenizer, tmp_path):
    path = tmp_path / "chatml.jinja"
    path.write_text(get_template("chatml").to_jinja())
    template = get_template(str(path))
    chat = make_chat("j", n_rounds=5, seed=3, system="Sys.")
    result = split(Splitter(template, tiny_tokenizer, 150), chat)
    assert [p.turns for p in result.pieces] == reference_pieces(tiny_tokenizer, template, chat, 150)
    assert len(result.pieces) > 1
