"""Golden renderings, ids and labels for every built-in template.

Supervised spans are written inline between « and », so one string pins both the text a model sees
and exactly which characters it learns to generate.
"""

from __future__ import annotations

import pytest
from vocab import word_tokenizer

from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN, SpecialText, TemplateError
from llama_sft.data.validate import load_conversations

X = IGNORE_INDEX
# FastChat's vicuna_v1.1 system message, copied from fastchat/conversation.py.
VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."

CASES = {
    "single": [("user", "What is 2 + 3?"), ("assistant", "5")],
    "multi": [("user", "Hi!"), ("assistant", "Hello."), ("user", "2+2?"), ("assistant", "4")],
    "system": [("system", "Be brief."), ("user", "Hi!"), ("assistant", "Hello.")],
    "unicode": [("user", "Héllo wörld, 你好 🙂"), ("assistant", "Ça va 👍")],
    "controls": [("user", "Is </s> a token? ASSISTANT: no"), ("assistant", "USER: yes </s>")],
}

GOLDEN = {
    # FastChat's ADD_COLON_TWO: system + " ", "USER: q" + " ", "ASSISTANT: a" + "</s>".
    ("vicuna_v1.1", "single"): f"<s>{VICUNA} USER: What is 2 + 3? ASSISTANT:« 5</s>»",
    ("vicuna_v1.1", "multi"): f"<s>{VICUNA} USER: Hi! ASSISTANT:« Hello.</s>»USER: 2+2? ASSISTANT:« 4</s>»",
    ("vicuna_v1.1", "system"): "<s>Be brief. USER: Hi! ASSISTANT:« Hello.</s>»",
    ("vicuna_v1.1", "unicode"): f"<s>{VICUNA} USER: Héllo wörld, 你好 🙂 ASSISTANT:« Ça va 👍</s>»",
    (
        "vicuna_v1.1",
        "controls",
    ): f"<s>{VICUNA} USER: Is </s> a token? ASSISTANT: no ASSISTANT:« USER: yes </s></s>»",
    # Meta's chat_completion: each round is [BOS] "[INST] q [/INST] a " [EOS].
    ("llama-2", "single"): "<s>[INST] What is 2 + 3? [/INST]« 5 </s>»",
    ("llama-2", "multi"): "<s>[INST] Hi! [/INST]« Hello. </s>»<s>[INST] 2+2? [/INST]« 4 </s>»",
    ("llama-2", "system"): "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST]« Hello. </s>»",
    ("llama-2", "unicode"): "<s>[INST] Héllo wörld, 你好 🙂 [/INST]« Ça va 👍 </s>»",
    ("llama-2", "controls"): "<s>[INST] Is </s> a token? ASSISTANT: no [/INST]« USER: yes </s> </s>»",
    # Meta's Llama-3 ChatFormat; {bos} is the tokenizer's BOS ("<s>" here, <|begin_of_text|> for Llama-3).
    ("llama-3", "single"): "<s><|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n«5<|eot_id|>»",
    ("llama-3", "multi"): "<s><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n«Hello.<|eot_id|>»"
    "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n«4<|eot_id|>»",
    ("llama-3", "system"): "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n«Hello.<|eot_id|>»",
    ("llama-3", "unicode"): "<s><|start_header_id|>user<|end_header_id|>\n\nHéllo wörld, 你好 🙂<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n«Ça va 👍<|eot_id|>»",
    (
        "llama-3",
        "controls",
    ): "<s><|start_header_id|>user<|end_header_id|>\n\nIs </s> a token? ASSISTANT: no<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n«USER: yes </s><|eot_id|>»",
    # ChatML: the newline after <|im_end|> is context, not learned.
    (
        "chatml",
        "single",
    ): "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n«5<|im_end|>»\n",
    ("chatml", "multi"): "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n«Hello.<|im_end|>»\n"
    "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n«4<|im_end|>»\n",
    ("chatml", "system"): "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\n«Hello.<|im_end|>»\n",
    (
        "chatml",
        "unicode",
    ): "<|im_start|>user\nHéllo wörld, 你好 🙂<|im_end|>\n<|im_start|>assistant\n«Ça va 👍<|im_end|>»\n",
    (
        "chatml",
        "controls",
    ): "<|im_start|>user\nIs </s> a token? ASSISTANT: no<|im_end|>\n<|im_start|>assistant\n"
    "«USER: yes </s><|im_end|>»\n",
    ("alpaca", "single"): f"<s>{ALPACA}\n\n### Instruction:\nWhat is 2 + 3?\n\n### Response:\n«5</s>»\n\n",
    ("alpaca", "multi"): f"<s>{ALPACA}\n\n### Instruction:\nHi!\n\n### Response:\n«Hello.</s>»\n\n"
    "### Instruction:\n2+2?\n\n### Response:\n«4</s>»\n\n",
    ("alpaca", "system"): "<s>Be brief.\n\n### Instruction:\nHi!\n\n### Response:\n«Hello.</s>»\n\n",
    (
        "alpaca",
        "unicode",
    ): f"<s>{ALPACA}\n\n### Instruction:\nHéllo wörld, 你好 🙂\n\n### Response:\n«Ça va 👍</s>»\n\n",
    (
        "alpaca",
        "controls",
    ): f"<s>{ALPACA}\n\n### Instruction:\nIs </s> a token? ASSISTANT: no\n\n### Response:\n"
    "«USER: yes </s></s>»\n\n",
}


def messages(case: str) -> list[Message]:
    return [Message(role, content) for role, content in CASES[case]]


def marked(rendered) -> str:
    """The rendered text with each supervised span between « and »."""
    out, last = [], 0
    for start, end in rendered.spans:
        out += [rendered.text[last:start], "«", rendered.text[start:end], "»"]
        last = end
    return "".join(out) + rendered.text[last:]


def test_golden_covers_every_template_and_case():
    assert GOLDEN.keys() == {(t, c) for t in BUILTIN for c in CASES}


@pytest.mark.parametrize(("name", "case"), sorted(GOLDEN))
def test_rendered_text_and_spans(name, case):
    assert marked(BUILTIN[name].render(messages(case))) == GOLDEN[(name, case)]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_generation_prompt_is_the_text_before_the_reply(name):
    prompt = BUILTIN[name].render(messages("single")[:1], add_generation_prompt=True)
    assert prompt.spans == ()
    assert prompt.text == GOLDEN[(name, "single")].split("«")[0]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_trailing_user_turn_is_dropped_on_load(name, write_json):
    path = write_json(
        "trailing.json",
        [
            {
                "id": "t1",
                "conversations": [
                    {"from": "human", "value": "What is 2 + 3?"},
                    {"from": "gpt", "value": "5"},
                    {"from": "human", "value": "And 4 + 4?"},
                ],
            }
        ],
    )
    conversations, report = load_conversations(path)
    assert [(i.reason, i.severity) for i in report.issues] == [("trailing_user_dropped", "warning")]
    assert marked(BUILTIN[name].render(conversations[0].messages)) == GOLDEN[(name, "single")]


def test_llama3_uses_the_tokenizers_bos_text():
    rendered = BUILTIN["llama-3"].render(
        messages("single"), special=SpecialText("<|begin_of_text|>", "<|end_of_text|>")
    )
    assert rendered.text == GOLDEN[("llama-3", "single")].replace("«", "").replace("»", "").replace(
        "<s>", "<|begin_of_text|>", 1
    )


def test_braces_and_placeholders_in_content_stay_literal():
    msgs = [Message("user", "fill {content} and {eos} in {x}"), Message("assistant", "{bos}{system}")]
    text = BUILTIN["vicuna_v1.1"].render(msgs).text
    assert text.endswith("USER: fill {content} and {eos} in {x} ASSISTANT: {bos}{system}</s>")


# --- the Vicuna details FastChat users rely on ------------------------------------------------------


def test_vicuna_system_and_separators():
    template = BUILTIN["vicuna_v1.1"]
    assert template.default_system == VICUNA
    text = template.render(messages("multi")).text
    assert "Hi! ASSISTANT:" in text  # " " after a user turn
    assert "Hello.</s>USER:" in text  # "</s>" after an assistant turn
    assert template.render(messages("single")[:1], add_generation_prompt=True).text.endswith("ASSISTANT:")
    assert template.stop() == ("</s>", "USER:")


def test_vicuna_space_after_assistant_and_eos_are_labelled(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the setup in which FastChat-style masking loses EOS
    enc = encode_conversation(Conversation(messages("single")), BUILTIN["vicuna_v1.1"], tok)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    supervised = [t for t, label in zip(tokens, enc.labels, strict=True) if label != X]
    # LLaMA-style vocabularies have no "▁5": the space is a token of its own and must be learned.
    assert tokens[-4:] == ["▁ASSISTANT:", "▁", "5", "</s>"]
    assert supervised == ["▁", "5", "</s>"]
    assert enc.labels[-3:] == enc.input_ids[-3:]
    assert enc.labels[-1] == tok.eos_token_id
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids.count(tok.bos_token_id) == 1


def test_bos_twice_is_an_error(tiny_tokenizer):
    conv = Conversation(
        [Message("system", "<s>Be brief."), Message("user", "Hi"), Message("assistant", "Hello.")]
    )
    with pytest.raises(TemplateError, match="BOS appears twice"):
        encode_conversation(conv, BUILTIN["vicuna_v1.1"], tiny_tokenizer)


# --- exact ids and labels with a word-level tokenizer ------------------------------------------------

WORDS = [
    "USER:", "ASSISTANT:", "SYS", "Q1", "A1", "Q2", "A2",  # 3-9
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",  # 10-13
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>",  # 14-18
    "system", "user", "assistant", "###", "Instruction:", "Response:",  # 19-24
]  # fmt: skip
# 0 <unk> 1 <s> 2 </s> 3 USER: 4 ASSISTANT: 5 SYS 6 Q1 7 A1 8 Q2 9 A2 10 [INST] 11 [/INST] 12 <<SYS>> 13 <</SYS>>
# 14 <|start_header_id|> 15 <|end_header_id|> 16 <|eot_id|> 17 <|im_start|> 18 <|im_end|>
# 19 system 20 user 21 assistant 22 ### 23 Instruction: 24 Response:
TWO_TURNS = Conversation(
    [
        Message("system", "SYS"),
        Message("user", "Q1"),
        Message("assistant", "A1"),
        Message("user", "Q2"),
        Message("assistant", "A2"),
    ]
)
WORD_GOLDEN = {
    # <s> SYS USER: Q1 ASSISTANT: A1 </s> USER: Q2 ASSISTANT: A2 </s>
    "vicuna_v1.1": ([1, 5, 3, 6, 4, 7, 2, 3, 8, 4, 9, 2],
                    [X, X, X, X, X, 7, 2, X, X, X, 9, 2]),
    # <s> [INST] <<SYS>> SYS <</SYS>> Q1 [/INST] A1 </s> <s> [INST] Q2 [/INST] A2 </s>
    "llama-2": ([1, 10, 12, 5, 13, 6, 11, 7, 2, 1, 10, 8, 11, 9, 2],
                [X, X, X, X, X, X, X, 7, 2, X, X, X, X, 9, 2]),
    # <s> (<|start_header_id|> role <|end_header_id|> content <|eot_id|>) x 5
    "llama-3": ([1, 14, 19, 15, 5, 16, 14, 20, 15, 6, 16, 14, 21, 15, 7, 16, 14, 20, 15, 8, 16, 14, 21, 15, 9, 16],
                [X, X, X, X, X, X, X, X, X, X, X, X, X, X, 7, 16, X, X, X, X, X, X, X, X, 9, 16]),
    # (<|im_start|> role content <|im_end|>) x 5
    "chatml": ([17, 19, 5, 18, 17, 20, 6, 18, 17, 21, 7, 18, 17, 20, 8, 18, 17, 21, 9, 18],
               [X, X, X, X, X, X, X, X, X, X, 7, 18, X, X, X, X, X, X, 9, 18]),
    # <s> SYS ### Instruction: Q1 ### Response: A1 </s> ### Instruction: Q2 ### Response: A2 </s>
    "alpaca": ([1, 5, 22, 23, 6, 22, 24, 7, 2, 22, 23, 8, 22, 24, 9, 2],
               [X, X, X, X, X, X, X, 7, 2, X, X, X, X, X, 9, 2]),
}  # fmt: skip


@pytest.fixture(scope="module")
def words():
    return word_tokenizer(WORDS)


def test_word_golden_covers_every_template():
    assert WORD_GOLDEN.keys() == BUILTIN.keys()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_word_level_ids_and_labels(name, words):
    enc = encode_conversation(TWO_TURNS, BUILTIN[name], words)
    assert (enc.input_ids, enc.labels) == WORD_GOLDEN[name]
    assert words.pad_token_id == words.eos_token_id  # EOS is labelled all the same


def test_eos_inside_a_reply_is_a_labelled_eos(words):
    # Content is tokenized as text, so "</s>" written in a reply becomes the EOS token; validation
    # warns about it (control_string), the labels show what the model would learn.
    conv = Conversation(
        [Message("system", "SYS"), Message("user", "Q1 ASSISTANT:"), Message("assistant", "A1 </s> A2")]
    )
    enc = encode_conversation(conv, BUILTIN["vicuna_v1.1"], words)
    # <s> SYS USER: Q1 ASSISTANT: ASSISTANT: A1 </s> A2 </s>
    assert enc.input_ids == [1, 5, 3, 6, 4, 4, 7, 2, 9, 2]
    assert enc.labels == [X, X, X, X, X, X, 7, 2, 9, 2]


# --- golden labels with the LLaMA-style BPE ----------------------------------------------------------

BPE_SUPERVISED = {
    "vicuna_v1.1": " 5</s>",
    "llama-2": " 5 </s>",
    "llama-3": "5<|eot_id|>",
    "chatml": "5<|im_end|>",
    "alpaca": "5</s>",
}


def supervised_text(tokenizer, enc) -> str:
    # Not tokenizer.decode: LLaMA's decoder strips one leading space, the very space we check.
    tokens = tokenizer.convert_ids_to_tokens([label for label in enc.labels if label != X])
    return "".join(tokens).replace("▁", " ")


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_bpe_supervised_tokens(name, tiny_tokenizer):
    enc = encode_conversation(Conversation(messages("single")), BUILTIN[name], tiny_tokenizer)
    assert supervised_text(tiny_tokenizer, enc) == BPE_SUPERVISED[name]
    assert enc.boundary_tokens == 0


@pytest.mark.parametrize(("name", "case"), sorted(GOLDEN))
def test_bpe_supervised_tokens_are_exactly_the_spans(name, case, tiny_tokenizer):
    """Every case: the characters under labelled tokens are exactly the « » spans, nothing more or less."""
    tok = tiny_tokenizer
    enc = encode_conversation(Conversation(messages(case)), BUILTIN[name], tok)
    offsets = tok(enc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # A character cut into byte tokens repeats its offsets: collect characters, not token texts.
    chars = sorted(
        {k for (s, e), label in zip(offsets, enc.labels, strict=True) if label != X for k in range(s, e)}
    )
    covered = "".join(enc.text[k] for k in chars)
    golden = GOLDEN[(name, case)]
    spans = "".join(part.split("»")[0] for part in golden.split("«")[1:])
    assert covered == spans
    assert enc.labels == [i if label != X else X for i, label in zip(enc.input_ids, enc.labels, strict=True)]
