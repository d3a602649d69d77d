"""The entry point: subcommands listed, the deepspeed launcher's --local_rank accepted."""

from __future__ import annotations

import os

from llama_sft.cli.main import main, strip_local_rank


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "data", "templates", "plan", "eval", "chat", "merge", "serve"):
        assert command in out


def test_deepspeed_launcher_local_rank_is_taken_out(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "unset-me")  # registers the variable, so teardown restores it
    monkeypatch.delenv("LOCAL_RANK")
    assert strip_local_rank(["--local_rank=3", "train", "--lora_r", "8"]) == ["train", "--lora_r", "8"]
    assert os.environ["LOCAL_RANK"] == "3"
    assert strip_local_rank(["train", "--local_rank", "1", "--x"]) == ["train", "--x"]
