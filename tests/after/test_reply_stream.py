"""ReplyStream with a scripted model: stop strings, held-back text, finish reasons, context limits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llama_sft.data.messages import Message
from llama_sft.data.templates import BUILTIN
from llama_sft.generation import (
    PromptTooLong,
    ReplyStream,
    SamplingParams,
    _safe_prefix,
    build_prompt,
    generate_reply,
    stream_reply,
)


class Scripted(torch.nn.Module):
    """Emits a fixed token sequence, one per forward call, whatever the input."""

    def __init__(self, ids: list[int], vocab_size: int, context: int = 512):
        super().__init__()
        self.ids, self.vocab_size = list(ids), vocab_size
        self.config = SimpleNamespace(max_position_embeddings=context)
        self.calls = 0

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, cache=None, use_cache=True):
        logits = torch.full((1, input_ids.shape[1], self.vocab_size), -1e4)
        logits[0, -1, self.ids[min(self.calls, len(self.ids) - 1)]] = 0.0
        self.calls += 1
        return SimpleNamespace(logits=logits, cache=None)


def scripted(tokenizer, text: str, eos: bool = True) -> Scripted:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    return Scripted(ids, len(tokenizer))


USER = [Message("user", "Hi")]


def test_reply_is_cut_before_a_stop_string_and_never_shows_its_start(tiny_tokenizer):
    template = BUILTIN["vicuna_v1.1"]
    model = scripted(tiny_tokenizer, " Hello world USER: more text", eos=False)
    stream = ReplyStream(model, tiny_tokenizer, template, USER, SamplingParams(max_new_tokens=40))
    pieces = list(stream)
    assert "".join(pieces) == "Hello world"
    assert not any("U" in p for p in pieces)  # "US", "USE" were held back, never streamed
    assert stream.finish_reason == "stop"
    assert stream.prompt_tokens == len(
        tiny_tokenizer(build_prompt(template, tiny_tokenizer, USER), add_special_tokens=False)["input_ids"]
    )


def test_eos_length_and_extra_stop(tiny_tokenizer):
    template = BUILTIN["chatml"]
    done = ReplyStream(scripted(tiny_tokenizer, "The quick fox"), tiny_tokenizer, template, USER)
    assert "".join(done) == "The quick fox" and done.finish_reason == "stop"
    assert (
        done.completion_tokens
        == len(tiny_tokenizer("The quick fox", add_special_tokens=False)["input_ids"]) + 1
    )
    short = ReplyStream(
        scripted(tiny_tokenizer, "The quick brown fox jumps"),
        tiny_tokenizer,
        template,
        USER,
        SamplingParams(max_new_tokens=3),
    )
    text = "".join(short)
    assert (
        short.finish_reason == "length"
        and short.completion_tokens == 3
        and "The quick brown fox".startswith(text)
    )
    extra = ReplyStream(
        scripted(tiny_tokenizer, "The quick brown fox"),
        tiny_tokenizer,
        template,
        USER,
        SamplingParams(stop=("brown",)),
    )
    assert "".join(extra) == "The quick" and extra.finish_reason == "stop"


def test_single_token_stop_ends_the_reply(tiny_tokenizer):
    template = BUILTIN["llama-3"]  # <|eot_id|> is one token of the tiny vocabulary
    model = scripted(tiny_tokenizer, "Fine.<|eot_id|>ignored", eos=False)
    stream = ReplyStream(model, tiny_tokenizer, template, USER)
    assert "".join(stream) == "Fine." and stream.finish_reason == "stop"


def test_stream_pieces_join_to_generate_reply(tiny_tokenizer):
    template = BUILTIN["llama-2"]  # replies render as " {content} </s>": the spaces are stripped
    text = " 12 inches is 1 foot.  "
    joined = "".join(stream_reply(scripted(tiny_tokenizer, text), tiny_tokenizer, template, USER))
    assert joined == generate_reply(scripted(tiny_tokenizer, text), tiny_tokenizer, template, USER)
    assert joined == "12 inches is 1 foot."


def test_prompt_longer_than_context_is_refused_and_max_tokens_clamped(tiny_tokenizer):
    template = BUILTIN["chatml"]
    prompt_len = len(
        tiny_tokenizer(build_prompt(template, tiny_tokenizer, USER), add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(PromptTooLong):
        ReplyStream(Scripted([5], len(tiny_tokenizer), context=prompt_len), tiny_tokenizer, template, USER)
    stream = ReplyStream(
        Scripted([300], len(tiny_tokenizer), context=prompt_len + 2),
        tiny_tokenizer,
        template,
        USER,
        SamplingParams(max_new_tokens=100),
    )
    list(stream)
    assert stream.completion_tokens == 2 and stream.finish_reason == "length"


def test_sampling_is_reproducible_with_a_seed(tiny_tokenizer):
    class Uniform(Scripted):
        def forward(self, input_ids, cache=None, use_cache=True):
            return SimpleNamespace(logits=torch.zeros((1, input_ids.shape[1], self.vocab_size)), cache=None)

    template = BUILTIN["chatml"]
    model = Uniform([0], len(tiny_tokenizer))
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    first = ReplyStream(model, tiny_tokenizer, template, USER, params)
    second = ReplyStream(model, tiny_tokenizer, template, USER, params)
    assert "".join(first) == "".join(second)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello US", "Hello"),  # may become "USER:"
        ("Hello U", "Hello"),
        ("Hello USA", "Hello USA"),  # can no longer become "USER:"
        ("abc \ufffd", "abc"),  # an unfinished UTF-8 character
        ("trailing   ", "trailing"),
    ],
)
def test_safe_prefix(text, expected):
    assert _safe_prefix(text, ("USER:", "</s>")) == expected
