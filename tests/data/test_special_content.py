"""Special-token strings inside message content (`</s>` from HTML strikethrough, `<|im_end|>`, any
special or added token of the tokenizer): detected against the tokenizer itself, reported with
records, refused under `error`/--strict, and with `split` kept as plain text, with the same ids in
training and in the prompt a server builds."""

from __future__ import annotations

import json

import pytest
from ci import unavailable
from vocab import VocabUnavailable, load_llama_tokenizer

from llama_sft.cli.main import main
from llama_sft.data.dataset import build_dataset
from llama_sft.data.encode import IGNORE_INDEX, encode_conversation
from llama_sft.data.issues import DataError
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.special_content import encode_split, special_strings
from llama_sft.data.templates import BUILTIN, SpecialText
from llama_sft.generation import prompt_ids

STRIKE = "Use <s>old</s> new</s> syntax; models end turns with <|im_end|>."
RECORDS = [
    {"id": "html", "conversations": [{"from": "human", "value": "Strikethrough in HTML?"},
                                      {"from": "gpt", "value": STRIKE}]},
    {"id": "added", "conversations": [{"from": "human", "value": "What is <|begin_of_text|>?"},
                                       {"from": "gpt", "value": "A marker."}]},
    {"id": "clean", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]  # fmt: skip


def test_detects_the_tokenizers_own_tokens_not_only_template_literals(tiny_tokenizer):
    strings = special_strings(tiny_tokenizer)
    # <|begin_of_text|> is no part of the vicuna template; the tokenizer still makes it one id.
    assert {"</s>", "<s>", "<|im_end|>", "<|begin_of_text|>"} <= set(strings)
    assert "<|begin_of_text|>" not in BUILTIN["vicuna_v1.1"].control_strings()


def test_warn_reports_count_and_records(write_json, tiny_tokenizer):
    path = write_json("d.json", RECORDS)
    dataset, report, stats = build_dataset(
        [path], tiny_tokenizer, BUILTIN["vicuna_v1.1"], 256, use_cache=False
    )
    assert len(dataset) == 3 and stats["special_in_content"] == 2
    issues = [i for i in report.issues if i.reason == "special_token_in_content"]
    assert [(i.record_id, i.severity) for i in issues] == [("html", "warning"), ("added", "warning")]
    assert "['</s>', '<s>', '<|im_end|>']" in issues[0].detail and "<|begin_of_text|>" in issues[1].detail


@pytest.mark.parametrize("how", [{"special_policy": "error"}, {"strict": True}])
def test_error_policy_and_strict_refuse_the_records(write_json, tiny_tokenizer, how):
    path = write_json("d.json", RECORDS)
    with pytest.raises(DataError, match=r"record 0 \(id html\): special_token_in_content"):
        build_dataset([path], tiny_tokenizer, BUILTIN["vicuna_v1.1"], 256, use_cache=False, **how)
    dataset, report, _ = build_dataset([path], tiny_tokenizer, BUILTIN["vicuna_v1.1"], 256, use_cache=False,
                                       skip_bad=True, **how)  # fmt: skip
    assert dataset["id"] == ["clean"] and report.skipped_ids == ["html", "added"]


def test_split_keeps_content_specials_as_text_and_template_tokens_as_control(tiny_tokenizer):
    conv = Conversation([Message("user", "Strikethrough?"), Message("assistant", STRIKE)])
    template = BUILTIN["vicuna_v1.1"]
    warn = encode_conversation(conv, template, tiny_tokenizer)
    split = encode_conversation(conv, template, tiny_tokenizer, special_policy="split")
    eos, bos = tiny_tokenizer.eos_token_id, tiny_tokenizer.bos_token_id
    assert warn.input_ids.count(eos) == 3  # two from content: the model would learn to stop mid-reply
    assert split.input_ids.count(eos) == 1 and split.input_ids[-1] == eos  # only the template's
    assert split.input_ids.count(bos) == 1 and split.input_ids[0] == bos
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in warn.input_ids and im_end not in split.input_ids
    reply = [t for t in split.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(reply).replace(" ", "") == (STRIKE + "</s>").replace(" ", "")
    # The content part is what the tokenizer gives with special tokens off, bar the pieces' borders.
    assert split.text == warn.text


def tokenizers_under_test(tiny_tokenizer):
    yield "tiny", tiny_tokenizer
    for kind in ("spm", "bpe"):
        try:
            yield kind, load_llama_tokenizer(kind)
        except VocabUnavailable as exc:
            unavailable(f"LLaMA vocabularies unavailable: {exc}")


@pytest.mark.slow
def test_split_encoding_equals_the_tokenizer_where_content_has_no_specials(tiny_tokenizer):
    """The pieces path (cut at control tokens, each piece tokenized alone) is the tokenizer's own
    result on text whose specials all come from the template: on the tiny BPE, LLaMA-2's SPM and
    LLaMA-3's BPE, for every built-in template."""
    conv = [Message("system", "Be brief."), Message("user", "Hello there, 12 km?"),
            Message("assistant", " 12000 m.\n\n- yes"), Message("user", "Thanks!"), Message("assistant", "Bye")]  # fmt: skip
    for kind, tokenizer in tokenizers_under_test(tiny_tokenizer):
        special = SpecialText.from_tokenizer(tokenizer)
        for name, template in BUILTIN.items():
            text = template.render(conv, special=special).text
            expected = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = encode_split(
                tokenizer, [text], [[(0, 0)]]
            )  # a hit that covers nothing: pieces path
            assert ids[0] == expected["input_ids"], (kind, name)
            assert offsets[0] == [tuple(o) for o in expected["offset_mapping"]], (kind, name)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_server_prompt_ids_equal_training_ids_under_split(name, tiny_tokenizer):
    template = BUILTIN[name]
    messages = [
        Message("user", "Show <|eot_id|> and </s>"),
        Message("assistant", STRIKE),
        Message("user", "ok</s>"),
    ]
    tiny_tokenizer.special_tokens_in_content = "split"
    try:
        text, ids = prompt_ids(template, tiny_tokenizer, messages)
    finally:
        del tiny_tokenizer.special_tokens_in_content
    train = encode_conversation(Conversation([*messages, Message("assistant", "x")]), template, tiny_tokenizer,
                                special_policy="split")  # fmt: skip
    start = train.spans[-1][0]
    assert train.text[:start] == text
    n = next(k for k, (s, _) in enumerate(train.offsets) if s >= start)
    assert train.input_ids[:n] == ids


def test_data_stats_flag(write_json, capsys):
    path = write_json("d.json", RECORDS)
    argv = ["data", "stats", str(path), "--tokenizer", "tiny", "--json", "--plot", ""]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["special_tokens_in_content"] == 2
    assert main([*argv, "--strict", "--skip_bad"]) == 1
    assert main([*argv, "--special_tokens_in_content", "split"]) == 0


@pytest.mark.slow
def test_run_records_the_policy_and_chat_reads_it_back(tmp_path, tiny_model_dir, write_json):
    from llama_sft.generation import load_for_inference

    path = write_json("d.json", RECORDS * 4)
    out = tmp_path / "run"
    assert main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(path), "--output_dir",
                 str(out), "--max_steps", "1", "--save_strategy", "no", "--report_to", "none",
                 "--special_tokens_in_content", "split", "--model_max_length", "96"]) == 0  # fmt: skip
    assert json.loads((out / "run_record.json").read_text())["special_tokens_in_content"] == "split"
    _, tokenizer, template = load_for_inference(out)
    assert tokenizer.special_tokens_in_content == "split"
    _, ids = prompt_ids(template, tokenizer, [Message("user", "a </s> b")])
    assert tokenizer.eos_token_id not in ids
