"""`data stats` and `data inspect` count with the model's tokenizer, never a silent toy default, and
say which tokenizer they used."""

from __future__ import annotations

import json

import pytest

from llama_sft.cli.main import main


@pytest.mark.parametrize("command", ["stats", "inspect"])
def test_tokenizer_is_required(sharegpt_file, command, capsys):
    assert main(["data", command, str(sharegpt_file)]) == 2
    err = capsys.readouterr().err
    assert "--tokenizer" in err and "Traceback" not in err


def test_stats_names_the_tokenizer_and_counts_with_it(sharegpt_file, tiny_model_dir, capsys):
    assert (
        main(
            ["data", "stats", str(sharegpt_file), "--tokenizer", str(tiny_model_dir), "--json", "--plot", ""]
        )
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["tokenizer"].startswith(str(tiny_model_dir)) and "bos '<s>'" in stats["tokenizer"]
    # A model directory is accepted under the train flag's name too.
    assert main(["data", "stats", str(sharegpt_file), "--model_name_or_path", str(tiny_model_dir), "--json",
                 "--plot", ""]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["tokens"] == stats["tokens"]


def test_inspect_prints_the_tokenizer(sharegpt_file, capsys):
    assert main(["data", "inspect", str(sharegpt_file), "--tokenizer", "tiny"]) == 0
    assert capsys.readouterr().out.startswith("tokenizer: tiny (")
