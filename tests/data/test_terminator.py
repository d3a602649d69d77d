"""A tokenizer without EOS, or whose EOS string is not a special token, would train replies that
never end: training refuses it with the fix; a BOS that is not special is a warning."""

from __future__ import annotations

import json

import pytest

from llama_sft.cli.main import main
from llama_sft.data.templates import BUILTIN, get_template
from llama_sft.data.tokenizer import TerminatorError, check_terminator, load_tokenizer
from llama_sft.tiny import build_tokenizer


@pytest.mark.parametrize("name", ["vicuna_v1.1", "llama-2", "alpaca"])
def test_tokenizer_without_eos_is_refused(name):
    tokenizer = build_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(TerminatorError, match="no eos_token.*set eos_token"):
        check_terminator(tokenizer, BUILTIN[name])


def test_eos_string_that_is_not_special_is_refused():
    tokenizer = build_tokenizer()
    tokenizer.eos_token = "END"  # not in the vocabulary: tokenizes as ordinary pieces
    with pytest.raises(TerminatorError, match="'END' is not a special token"):
        check_terminator(tokenizer, BUILTIN["vicuna_v1.1"])


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_good_pairs_pass(name, tiny_tokenizer):
    assert check_terminator(tiny_tokenizer, BUILTIN[name]) == []


def test_templates_ending_in_their_own_control_token_need_no_eos():
    tokenizer = build_tokenizer()  # <|im_end|> and <|eot_id|> are special tokens of the tiny tokenizer
    tokenizer.eos_token = None
    for name in ("chatml", "llama-3"):
        assert check_terminator(tokenizer, BUILTIN[name]) == []


def test_real_model_tokenizer_template_passes(real_model_dir):
    tokenizer = load_tokenizer(str(real_model_dir))
    assert check_terminator(tokenizer, get_template("tokenizer", tokenizer)) == []


def test_bos_that_is_not_special_warns():
    tokenizer = build_tokenizer()
    tokenizer.bos_token = "BEGIN"
    (warning,) = check_terminator(tokenizer, BUILTIN["vicuna_v1.1"])
    assert "'BEGIN' is not a special token" in warning


def test_train_refuses_before_loading_weights(tmp_path, tiny_model_dir, sharegpt_file, capsys):
    import shutil

    model = tmp_path / "no-eos"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    code = main(["train", "--model_name_or_path", str(model), "--data_path", str(sharegpt_file),
                 "--output_dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "without a terminator" in err and "Traceback" not in err
