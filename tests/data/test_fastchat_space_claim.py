"""Does FastChat mask the space after "ASSISTANT:"? The README said so (and that a reply starting with a
digit then never learns to emit it). Checked here on the real LLaMA-2 32k SentencePiece vocabulary with
Meta's normalization (what `prepare_tokenizer` gives, and FastChat's `tokenizer.legacy = True` path):
FastChat's rule yields exactly our labels, the space token and every `</s>` included, so the claim was
dropped (docs/notes/defects.md).

FastChat is not a dependency; `fastchat_vicuna_labels` restates the masking rule of its
`train.preprocess` (fschat 0.2.36, vicuna_v1.1 separator style) in a few lines: render without BOS and
tokenize with it; cut the text at each "</s>"; in each round, mask the tokens of the part up to and
including " ASSISTANT: ", counted as len(tokenize(part)) - 2 (its BOS, and the lone "▁" the trailing
space becomes, which in the full text belongs to the reply's first token); mask everything after the
last round. benchmarks/preprocess.py runs the real FastChat when its venv exists (4,000/4,000
conversations identical).
"""

from __future__ import annotations

import pytest
from ci import unavailable
from vocab import VocabUnavailable, load_llama_tokenizer

from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spm():
    try:
        return load_llama_tokenizer("spm")
    except VocabUnavailable as exc:
        unavailable(f"LLaMA vocabularies unavailable: {exc}")


def fastchat_vicuna_labels(text: str, tokenizer) -> tuple[list[int], list[int]]:
    ids = tokenizer(text).input_ids  # BOS added by the tokenizer, as FastChat does
    labels = list(ids)
    cursor = 1
    labels[:cursor] = [IGNORE_INDEX]
    for round_text in text.split("</s>"):
        if not round_text:
            break
        prompt, found, _ = round_text.partition(" ASSISTANT: ")
        if not found:
            break
        prompt_len = len(tokenizer(prompt + found).input_ids) - 2
        labels[cursor : cursor + prompt_len] = [IGNORE_INDEX] * prompt_len
        cursor += len(tokenizer(round_text).input_ids)
    labels[cursor:] = [IGNORE_INDEX] * (len(labels) - cursor)
    return ids, labels


@pytest.mark.parametrize("first_reply", ["12 km is 12000 m.", "3", "Hello there", "- a list", "(yes)"])
def test_fastchat_rule_trains_the_space_after_assistant_as_we_do(spm, first_reply):
    messages = [Message("user", "How far?"), Message("assistant", first_reply),
                Message("user", "And 7?"), Message("assistant", "7 km.")]  # fmt: skip
    ours = encode_conversation(Conversation(messages), BUILTIN["vicuna_v1.1"], spm)
    assert ours.text.startswith("<s>")
    ids, labels = fastchat_vicuna_labels(ours.text[len("<s>") :], spm)
    assert ids == ours.input_ids
    assert labels == ours.labels
    # The token after "ASSISTANT:" starts at the space: for a digit it is a lone "▁", trained by both.
    after = next(k for k, (s, _) in enumerate(ours.offsets) if s == ours.spans[0][0])
    assert spm.convert_ids_to_tokens(ours.input_ids[after]).startswith("▁")
    assert labels[after] == ours.input_ids[after] != IGNORE_INDEX
    if first_reply[0].isdigit():
        assert spm.convert_ids_to_tokens(ours.input_ids[after]) == "▁"
