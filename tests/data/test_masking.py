"""Masking strategies, truncation and boundary tokens, with exact labels."""

from __future__ import annotations

import pytest
from vocab import word_tokenizer

from llama_sft.data.encode import (
    IGNORE_INDEX,
    STRATEGIES,
    encode_conversation,
    encode_conversations,
    labels_from_offsets,
)
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN, FormatTemplate

X = IGNORE_INDEX
# 0 <unk> 1 <s> 2 </s> 3 USER: 4 ASSISTANT: 5 SYS 6 Q1 7 A1 8 Q2 9 A2 10 <|im_start|> 11 <|im_end|> 12 user 13 assistant
WORDS = [
    "USER:",
    "ASSISTANT:",
    "SYS",
    "Q1",
    "A1",
    "Q2",
    "A2",
    "<|im_start|>",
    "<|im_end|>",
    "user",
    "assistant",
]
TWO_TURNS = Conversation(
    [
        Message("system", "SYS"),
        Message("user", "Q1"),
        Message("assistant", "A1"),
        Message("user", "Q2"),
        Message("assistant", "A2"),
    ]
)
# <s> SYS USER: Q1 ASSISTANT: A1 </s> USER: Q2 ASSISTANT: A2 </s>
VICUNA_IDS = [1, 5, 3, 6, 4, 7, 2, 3, 8, 4, 9, 2]
VICUNA_LABELS = {
    "train_on_assistant": [X, X, X, X, X, 7, 2, X, X, X, 9, 2],
    "train_on_last": [X, X, X, X, X, X, X, X, X, X, 9, 2],
    "train_on_all": VICUNA_IDS,
}
# <|im_start|> user Q1 <|im_end|> <|im_start|> assistant A1 <|im_end|> x 2 (no system: ChatML has no default)
CHATML_IDS = [10, 12, 6, 11, 10, 13, 7, 11, 10, 12, 8, 11, 10, 13, 9, 11]
CHATML_LABELS = {
    "train_on_assistant": [X, X, X, X, X, X, 7, 11, X, X, X, X, X, X, 9, 11],
    "train_on_last": [X, X, X, X, X, X, X, X, X, X, X, X, X, X, 9, 11],
    "train_on_all": CHATML_IDS,
}


@pytest.fixture(scope="module")
def words():
    return word_tokenizer(WORDS)


def test_strategies_are_the_three_named_ones():
    assert STRATEGIES == ("train_on_assistant", "train_on_last", "train_on_all")
    assert VICUNA_LABELS.keys() == CHATML_LABELS.keys() == set(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_vicuna_labels(strategy, words):
    enc = encode_conversation(TWO_TURNS, BUILTIN["vicuna_v1.1"], words, strategy=strategy)
    assert enc.input_ids == VICUNA_IDS
    assert enc.labels == VICUNA_LABELS[strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chatml_labels(strategy, words):
    conv = Conversation(TWO_TURNS.messages[1:])
    enc = encode_conversation(conv, BUILTIN["chatml"], words, strategy=strategy)
    assert enc.input_ids == CHATML_IDS
    assert enc.labels == CHATML_LABELS[strategy]


def test_unknown_strategy(words):
    with pytest.raises(ValueError, match="train_on_everything.*train_on_assistant"):
        encode_conversation(TWO_TURNS, BUILTIN["vicuna_v1.1"], words, strategy="train_on_everything")


def test_truncation_keeps_the_first_tokens(words):
    enc = encode_conversation(TWO_TURNS, BUILTIN["vicuna_v1.1"], words, max_length=6)
    assert enc.input_ids == [1, 5, 3, 6, 4, 7]
    assert enc.labels == [X, X, X, X, X, 7]
    assert (enc.full_length, enc.truncated, enc.n_supervised) == (12, True, 1)
    enc = encode_conversation(TWO_TURNS, BUILTIN["vicuna_v1.1"], words, max_length=5)
    assert enc.n_supervised == 0  # the caller reports this (dataset.encode_with_report)


def test_batch_equals_one_by_one(tiny_tokenizer):
    convs = [TWO_TURNS, Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "5")])]
    batch = encode_conversations(convs, BUILTIN["llama-2"], tiny_tokenizer)
    single = [encode_conversation(c, BUILTIN["llama-2"], tiny_tokenizer) for c in convs]
    assert [(e.input_ids, e.labels) for e in batch] == [(e.input_ids, e.labels) for e in single]
    assert encode_conversations([], BUILTIN["llama-2"], tiny_tokenizer) == []


def test_label_by_token_start():
    # tokens: [0,2) [2,5) [5,6) [6,9); span [2,6): tokens starting at 2 and 5 are supervised.
    labels, straddle = labels_from_offsets([10, 11, 12, 13], [(0, 2), (2, 5), (5, 6), (6, 9)], [(2, 6)])
    assert (labels, straddle) == ([X, 11, 12, X], 0)
    # a token [1,3) that starts before the span and ends inside it is context and is counted.
    labels, straddle = labels_from_offsets([10, 11, 12], [(0, 1), (1, 3), (3, 4)], [(2, 4)])
    assert (labels, straddle) == ([X, X, 12], 1)
    assert labels_from_offsets([], [], [(0, 1)]) == ([], 0)


def test_boundary_token_is_counted(tiny_tokenizer):
    """A template whose reply starts mid-word: the merged token is context and shows up in the count."""
    template = FormatTemplate(
        name="split-colon",
        prefix="{bos}",
        user_format="USER: {content} ",
        generation_prompt="ASSISTANT",
        assistant_format=": {content}{eos}",
    )
    conv = Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "5")])
    enc = encode_conversation(conv, template, tiny_tokenizer)
    tokens = tiny_tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert tokens[-4:] == ["▁ASSISTANT:", "▁", "5", "</s>"]  # ":" sits inside "▁ASSISTANT:"
    assert enc.boundary_tokens == 1
    assert [t for t, label in zip(tokens, enc.labels, strict=True) if label != X] == ["▁", "5", "</s>"]
