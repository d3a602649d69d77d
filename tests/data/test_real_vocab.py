"""LLaMA's real vocabularies: llama.cpp's reference vectors, then goldens and parity on them.

How llama.cpp's vectors are meant (they were written by its convert_hf_to_gguf_update.py with
`AutoTokenizer.from_pretrained(<Meta's repo>).encode(text, add_special_tokens=False)`, and its
test-tokenizer-0 checks llama.cpp with `common_tokenize(ctx, text, add_special=false)`):

* no BOS or EOS is added, in either vocabulary;
* SentencePiece (LLaMA-1/2): Meta's dummy prefix "▁" is put before the text, always. A text that
  starts with a space therefore begins with a "▁" token of its own: " Hello" -> ["▁", "▁Hello"] =
  [29871, 15043]; "Hello" -> ["▁Hello"] = [15043]; "" -> [].
* BPE (LLaMA-3): no prefix space; the text is split with LLaMA-3's regex and a pre-token that is
  itself in the vocabulary is taken whole (tiktoken's rule, `ignore_merges` in tokenizer.json).

transformers' GGUF conversion breaks each of these once, and `prepare_tokenizer` repairs both.
The first run downloads the llama-cpp-python sdist and converts (about 30 s); later runs load
the cached conversion.
"""

from __future__ import annotations

import pytest
from ci import unavailable
from vocab import VocabUnavailable, load_llama_tokenizer, read_vectors

from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN, SpecialText

pytestmark = pytest.mark.slow
X = IGNORE_INDEX


def load(kind: str, prepared: bool = True):
    try:
        return load_llama_tokenizer(kind, prepared=prepared)
    except VocabUnavailable as exc:
        unavailable(f"LLaMA vocabularies unavailable: {exc}")


def vectors(kind: str):
    try:
        return read_vectors(kind)
    except VocabUnavailable as exc:
        unavailable(f"llama.cpp test vectors unavailable: {exc}")


@pytest.fixture(scope="module")
def spm():
    return load("spm")


@pytest.fixture(scope="module")
def bpe():
    return load("bpe")


def failures(tokenizer, cases) -> list[str]:
    return [text for text, ids in cases if tokenizer(text, add_special_tokens=False).input_ids != ids]


# --- the vocabularies against llama.cpp --------------------------------------------------------------


def test_spm_vectors(spm):
    cases = vectors("spm")
    assert len(cases) == 46
    assert (" Hello", [29871, 15043]) in cases and ("Hello", [15043]) in cases and ("", []) in cases
    # As transformers converts it: Metaspace(prepend_scheme="first") adds no "▁" to text that already
    # starts with a space, so exactly the 15 texts with a leading space come out wrong.
    raw_failures = failures(load("spm", prepared=False), cases)
    assert len(raw_failures) == 15 and all(text.startswith(" ") for text in raw_failures)
    assert len(cases) - len(raw_failures) == 31
    # After prepare_tokenizer (Meta's Prepend("▁") + Replace(" ", "▁") normalizer): all of them.
    assert failures(spm, cases) == []


def test_bpe_vectors(bpe):
    cases = vectors("bpe")
    assert len(cases) == 46
    # As converted the BPE applies merges even to a word that is a token itself ("Việt" -> 3 tokens).
    assert failures(load("bpe", prepared=False), cases) == ["Cửa Việt"]
    assert failures(bpe, cases) == []
    assert bpe("Cửa Việt", add_special_tokens=False).input_ids == [34, 91163, 101798]


def test_spm_prefix_after_a_special_token(spm):
    """Why the SPM fix matters for chat templates: text right after "<s>" or "</s>" gets Meta's "▁"."""
    raw = load("spm", prepared=False)
    assert raw("<s>Hello", add_special_tokens=False).input_ids == [1, 10994]  # "Hello", not "▁Hello"
    assert spm("<s>Hello", add_special_tokens=False).input_ids == [1, 15043]
    assert (
        spm("</s>USER:", add_special_tokens=False).input_ids
        == [2] + spm("USER:", add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize("kind", ["spm", "bpe"])
def test_prepared_tokenizer_survives_save_and_load(kind, tmp_path):
    from transformers import AutoTokenizer

    load(kind).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert failures(reloaded, vectors(kind)) == []


def test_pad_tokens(spm, bpe):
    assert (spm.bos_token, spm.eos_token, spm.pad_token) == ("<s>", "</s>", "<unk>")  # FastChat's choice
    assert (bpe.bos_token, bpe.eos_token, bpe.pad_token) == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|end_of_text|>",
    )


# --- goldens on the real vocabularies ----------------------------------------------------------------

SINGLE = [Message("user", "What is 2 + 3?"), Message("assistant", "5")]
MULTI = [Message("system", "Be brief."), Message("user", "Hi!"), Message("assistant", "Hello."), Message("user", "2+2?"),
         Message("assistant", "4")]  # fmt: skip


def supervised_tokens(tokenizer, enc) -> list[str]:
    return tokenizer.convert_ids_to_tokens([label for label in enc.labels if label != X])


def test_vicuna_on_llama2_vocab(spm):
    enc = encode_conversation(Conversation(SINGLE), BUILTIN["vicuna_v1.1"], spm)
    # "ASSISTANT:" is ▁A SS IST ANT : ; the space before a digit is "▁" (29871), learned, as is </s>.
    assert enc.input_ids[-8:] == [319, 1799, 9047, 13566, 29901, 29871, 29945, 2]
    assert enc.labels[-8:] == [X, X, X, X, X, 29871, 29945, 2]
    assert supervised_tokens(spm, enc) == ["▁", "5", "</s>"]
    assert enc.input_ids[0] == 1 and enc.input_ids.count(1) == 1
    # FastChat tokenizes its prompt with the BOS added by the tokenizer: the same ids.
    prompt = enc.text.removeprefix("<s>").removesuffix("</s>")
    assert enc.input_ids == [1] + spm(prompt, add_special_tokens=False).input_ids + [2]
    assert enc.boundary_tokens == 0


def test_llama2_matches_metas_chat_completion(spm):
    """Meta's llama/generation.py: per round [BOS] + sp("[INST] {user} [/INST] {answer} ") + [EOS],
    the system prompt inside the first user message."""
    enc = encode_conversation(Conversation(MULTI), BUILTIN["llama-2"], spm)

    def sp(text):
        return spm(text, add_special_tokens=False).input_ids

    reference = (
        [1] + sp("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. ") + [2]
        + [1] + sp("[INST] 2+2? [/INST] 4 ") + [2]
    )  # fmt: skip
    assert enc.input_ids == reference
    assert supervised_tokens(spm, enc) == ["▁Hello", ".", "▁", "</s>", "▁", "4", "▁", "</s>"]
    prompt = BUILTIN["llama-2"].render(
        MULTI[:-1], add_generation_prompt=True, special=SpecialText.from_tokenizer(spm)
    )
    assert spm(prompt.text, add_special_tokens=False).input_ids == reference[: reference.index(2) + 1] + [
        1
    ] + sp("[INST] 2+2? [/INST]")


def test_llama3_matches_metas_chat_format(bpe):
    """Meta's llama3 ChatFormat: <|begin_of_text|>, then per message <|start_header_id|> role
    <|end_header_id|> "\\n\\n" content <|eot_id|>."""
    enc = encode_conversation(Conversation(MULTI), BUILTIN["llama-3"], bpe)
    assert enc.text.startswith("<|begin_of_text|><|start_header_id|>system")

    def encode(text):
        return bpe(text, add_special_tokens=False).input_ids

    reference, expected_labels = [128000], [X]
    for message in MULTI:
        header = [128006] + encode(message.role) + [128007] + encode("\n\n")
        body = encode(message.content) + [128009]
        reference += header + body
        expected_labels += [X] * len(header) + (body if message.role == "assistant" else [X] * len(body))
    assert enc.input_ids == reference
    assert enc.labels == expected_labels
    assert enc.input_ids.count(128000) == 1
    assert supervised_tokens(bpe, enc) == ["Hello", ".", "<|eot_id|>", "4", "<|eot_id|>"]


@pytest.mark.parametrize(("name", "kind"), [("vicuna_v1.1", "spm"), ("llama-2", "spm"), ("llama-3", "bpe")])
@pytest.mark.parametrize("conversation", ["single", "multi"])
def test_parity_on_real_vocab(name, kind, conversation, spm, bpe):
    tokenizer = spm if kind == "spm" else bpe
    template = BUILTIN[name]
    messages = SINGLE if conversation == "single" else MULTI
    as_dicts = [{"role": m.role, "content": m.content} for m in messages]
    enc = encode_conversation(Conversation(messages), template, tokenizer)
    assert enc.input_ids == tokenizer(enc.text, add_special_tokens=False).input_ids
    assert (
        tokenizer.apply_chat_template(as_dicts, chat_template=template.to_jinja(), tokenize=False) == enc.text
    )
    served = tokenizer.apply_chat_template(as_dicts, chat_template=template.to_jinja(), tokenize=True)[
        "input_ids"
    ]
    assert served == enc.input_ids
    prompt = tokenizer.apply_chat_template(
        as_dicts[:-1], chat_template=template.to_jinja(), add_generation_prompt=True, tokenize=False
    )
    assert prompt == template.render(messages[:-1], True, SpecialText.from_tokenizer(tokenizer)).text
    assert enc.text.startswith(prompt)
    assert enc.input_ids.count(tokenizer.bos_token_id) == (
        2 if name == "llama-2" and conversation == "multi" else 1
    )
