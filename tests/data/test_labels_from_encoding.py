"""Labels read from the tokenizer's Encodings (no offsets list) equal labels by the definition.

The definition, written out per token here as the reference: a token is supervised when its start
lies in a span, and it straddles a span when it starts before the span's start and ends after it.
The fast path looks at a few tokens per span boundary, so these tests throw spans at every kind of
position (inside multi-byte characters, in whitespace no token covers, at the end of the text, empty
and reversed) over tokenizers that normalize, strip, expand and drop characters.
"""

from __future__ import annotations

import random

import pytest
from vocab import word_tokenizer

from llama_sft.data.encode import (
    IGNORE_INDEX,
    _covered,
    encode_conversation,
    labels_from_encoding,
    offsets_in_order,
)
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN

PIECES = [
    *"ab c  \n\t.,!éx",
    "e\u0301",
    "ﬁ",
    "你",
    "好",
    "🙂",
    "\n\n",
    "</s>",
    "<s>",
    " <|im_end|> ",
    "İ",
    "¨",
]
PIECES += ["\u200b", "\u3000", "Ａ", "ß", "12345", "USER:", "ASSISTANT:"]


def by_definition(ids, offsets, spans):
    labels = [
        i if any(s <= a < e for s, e in spans) else IGNORE_INDEX
        for i, (a, _) in zip(ids, offsets, strict=True)
    ]
    return labels, sum(1 for s, _ in spans for a, b in offsets if a < s < b)


def random_texts(rng, n=300):
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def random_spans(rng, length):
    k = rng.randint(1, 4)
    points = sorted(rng.randint(0, length) for _ in range(2 * k))
    spans = [(points[2 * i], points[2 * i + 1]) for i in range(k)]
    return [*spans, (rng.randint(0, length), rng.randint(0, length))]  # maybe empty or reversed


def bert_like():
    """Lowercases, strips accents (drops characters), splits punctuation: offsets with gaps."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?"
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(letters)}}
    vocab |= {"##" + c: len(vocab) + i for i, c in enumerate(letters)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(strip_accents=True, lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def trimming_byte_level():
    """GPT-2 style: a prefix space and ByteLevel offset trimming, whose offsets can go backwards."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    backend.add_special_tokens([AddedToken("<|im_end|>", special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=backend)


TOKENIZERS = {
    "tiny": None,  # the session's tiny_tokenizer: LLaMA-style normalizer, byte fallback
    "words": lambda: word_tokenizer(["USER:", "ASSISTANT:", "a", "b", "c"]),
    "bert_like": bert_like,
}


@pytest.mark.parametrize("name", TOKENIZERS)
def test_labels_from_encoding_match_the_definition(name, request):
    tokenizer = request.getfixturevalue("tiny_tokenizer") if name == "tiny" else TOKENIZERS[name]()
    assert offsets_in_order(tokenizer)
    rng = random.Random(name)
    texts = random_texts(rng)
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    checked = 0
    for text, ids, offsets, encoding in zip(
        texts, enc["input_ids"], enc["offset_mapping"], enc.encodings, strict=True
    ):
        for _ in range(5):
            spans = random_spans(rng, len(text))
            assert labels_from_encoding(ids, encoding, spans, len(text)) == by_definition(
                ids, offsets, spans
            ), (
                text,
                spans,
            )
            checked += 1
    assert checked == 5 * len(texts)


def test_offset_trimming_takes_the_general_path():
    """The fast path would be wrong here, so the tokenizer is routed around it, and labels stay right."""
    tokenizer = trimming_byte_level()
    assert not offsets_in_order(tokenizer)
    text = "x<|im_end|>\ue000 y"
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert any(a[0] > b[0] for a, b in zip(offsets, offsets[1:], strict=False)), (
        offsets
    )  # starts go backwards
    conv = Conversation([Message("user", "\ue000 q"), Message("assistant", "\ue000 é 🙂")])
    enc = encode_conversation(conv, BUILTIN["chatml"], tokenizer)
    expected = tokenizer(enc.text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc.input_ids == expected["input_ids"]
    assert (enc.labels, enc.boundary_tokens) == by_definition(
        expected["input_ids"], expected["offset_mapping"], enc.spans
    )


def test_encoded_offsets_are_the_kept_tokens(tiny_tokenizer):
    conv = Conversation([Message("user", "What is 2 + 3?"), Message("assistant", "5, or 🙂 five")])
    full = encode_conversation(conv, BUILTIN["llama-2"], tiny_tokenizer)
    reference = tiny_tokenizer(full.text, add_special_tokens=False, return_offsets_mapping=True)
    assert full.offsets == reference["offset_mapping"]
    cut = encode_conversation(conv, BUILTIN["llama-2"], tiny_tokenizer, max_length=7)
    assert cut.truncated and cut.offsets == reference["offset_mapping"][:7]


class OffsetsEncoding:
    """The two `tokenizers.Encoding` lookups `labels_from_encoding` uses, over any offsets list."""

    def __init__(self, offsets):
        self.offsets = offsets

    def token_to_chars(self, i):
        return self.offsets[i]

    def char_to_token(self, pos):  # the first token covering pos, as the Rust lookup returns it
        return next((i for i, (a, b) in enumerate(self.offsets) if a <= pos < b), None)


def test_walks_over_zero_width_tokens_and_gaps():
    """Starts and ends that never decrease but repeat, skip characters or are empty (start == end)."""
    rng = random.Random(0)
    for _ in range(2000):
        offsets, start, end = [], 0, 0
        for _ in range(rng.randint(1, 12)):
            start = rng.choice([start, end, end, end + 1])  # overlap, touch, or skip a character
            end = max(end, start) + rng.choice([0, 0, 1, 1, 2, 3])
            offsets.append((start, end))
        length = max(b for _, b in offsets) + rng.randint(0, 2)
        ids = list(range(100, 100 + len(offsets)))
        spans = random_spans(rng, length)
        got = labels_from_encoding(ids, OffsetsEncoding(offsets), spans, length)
        assert got == by_definition(ids, offsets, spans), (offsets, spans)


def test_supervised_count_matches_the_labels(tiny_tokenizer):
    """`n_supervised` is counted from the label runs as they are made; it must equal the labels' count."""
    rng = random.Random(2)
    for max_length in (None, 3, 9, 17, 40):
        for _ in range(20):
            turns = [Message(role, "".join(rng.choice(PIECES[:20]) for _ in range(rng.randint(1, 9))) or "x")
                     for role in ("user", "assistant") * rng.randint(1, 3)]  # fmt: skip
            for template in ("llama-2", "chatml", "vicuna_v1.1"):
                enc = encode_conversation(Conversation(turns), BUILTIN[template], tiny_tokenizer, max_length)
                assert enc.supervised_count is not None  # the fast path made it
                assert enc.n_supervised == len(enc.labels) - enc.labels.count(IGNORE_INDEX)
    for _ in range(500):  # overlapping runs (spans that overlap), cut at `keep`
        runs = [tuple(sorted(rng.sample(range(30), 2))) for _ in range(rng.randint(0, 4))]
        keep = rng.randint(0, 30)
        assert _covered(runs, keep) == len({i for a, b in runs for i in range(a, min(b, keep))})
