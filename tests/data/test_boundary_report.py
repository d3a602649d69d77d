"""Tokens that straddle a prompt/reply boundary (their first characters are prompt, the rest reply)
are reported, with examples, in `data stats` and at train start, not only counted.

LLaMA-3's real BPE merges the alpaca template's "### Response:\\n" newline with a reply that starts
with a newline into one "\\n\\n" token, which is then context, never trained."""

from __future__ import annotations

import json
import logging

import pytest
from ci import unavailable
from vocab import VocabUnavailable, converted_dir

from llama_sft.cli.main import main

RECORDS = [
    {
        "id": "nl",
        "conversations": [{"from": "human", "value": "List"}, {"from": "gpt", "value": "\n- a\n- b"}],
    },
    {"id": "plain", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]


@pytest.fixture(scope="module")
def llama3_dir():
    try:
        return converted_dir("bpe")
    except VocabUnavailable as exc:
        unavailable(f"LLaMA-3 vocabulary unavailable: {exc}")


def test_stats_reports_boundary_tokens_with_examples(write_json, llama3_dir, capsys):
    path = write_json("d.json", RECORDS)
    argv = [
        "data",
        "stats",
        str(path),
        "--tokenizer",
        str(llama3_dir),
        "--conv_template",
        "alpaca",
        "--plot",
        "",
    ]
    assert main([*argv, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["boundary_tokens"], stats["boundary_conversations"]) == (1, 1)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "boundary_token" in err and "(id nl)" in err and "':\\n|\\n'" in err


@pytest.mark.slow
def test_train_start_reports_boundary_tokens(write_json, llama3_dir, tmp_path, caplog):
    from transformers import AutoTokenizer

    from llama_sft.tiny import save_tiny_model

    model_dir = save_tiny_model(
        tmp_path / "m", AutoTokenizer.from_pretrained(str(llama3_dir)), hidden_size=16
    )
    path = write_json("d.json", RECORDS * 4)
    with caplog.at_level(logging.INFO, logger="llama_sft"):
        logging.getLogger("llama_sft").addHandler(caplog.handler)
        code = main(["train", "--model_name_or_path", str(model_dir), "--data_path", str(path), "--conv_template",
                     "alpaca", "--output_dir", str(tmp_path / "run"), "--max_steps", "1", "--save_strategy", "no",
                     "--report_to", "none", "--method", "full", "--model_max_length", "64"])  # fmt: skip
    assert code == 0
    assert "4 token(s) across a prompt/reply boundary in 4 conversation(s)" in caplog.text
    assert "boundary_token: 4" in caplog.text and "':\\n|\\n'" in caplog.text
