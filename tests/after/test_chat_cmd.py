"""`llama-sft chat`: one answer with --prompt, and an interactive session driven through stdin."""

from __future__ import annotations

import io

import pytest

from llama_sft.data.messages import Message

pytestmark = pytest.mark.slow


def test_prompt_answers_once_like_generate_reply(full_run, capsys):
    from llama_sft.cli.main import main
    from llama_sft.generation import generate_reply, load_for_inference

    assert main(["chat", str(full_run), "--prompt", "Who are you?", "--max_new_tokens", "6"]) == 0
    answer = capsys.readouterr().out
    model, tokenizer, template = load_for_inference(full_run)
    expected = generate_reply(model, tokenizer, template, [Message("user", "Who are you?")], max_new_tokens=6)
    assert answer == expected + "\n"


@pytest.fixture
def chat_target(request):
    return request.getfixturevalue(request.param)  # in setup, so training output stays out of capsys


@pytest.mark.parametrize("chat_target", ["lora_run", "merged_lora"], indirect=True)
def test_interactive_session_commands(chat_target, monkeypatch, capsys):
    """Adapter runs (base + adapter) and merged models; prompts shown with --show_prompt go to stderr."""
    from llama_sft.cli.main import main

    path = chat_target
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("/system Be brief.\nhello\nagain\n/reset\nhi\n/bogus\n/exit\nnever\n")
    )
    assert main(["chat", str(path), "--max_new_tokens", "3", "--show_prompt"]) == 0
    captured = capsys.readouterr()
    prompts = [line for line in captured.err.splitlines() if line.startswith("<s>")]
    replies = captured.out.splitlines()
    assert len(prompts) == 3 and len(replies) == 3  # "never" comes after /exit
    assert prompts[0] == "<s>Be brief. USER: hello ASSISTANT:"
    # The second turn carries the first exchange, the reply closed by EOS as in training.
    assert prompts[1] == f"<s>Be brief. USER: hello ASSISTANT: {replies[0]}</s>USER: again ASSISTANT:"
    assert prompts[2] == "<s>Be brief. USER: hi ASSISTANT:"  # /reset keeps the system message
    assert "conversation reset" in captured.err and "unknown command /bogus" in captured.err


def test_system_flag_and_missing_template(full_run, tmp_path, capsys):
    import shutil

    from llama_sft.cli.main import main

    assert (
        main(
            [
                "chat",
                str(full_run),
                "--prompt",
                "hi",
                "--system",
                "S.",
                "--max_new_tokens",
                "1",
                "--show_prompt",
            ]
        )
        == 0
    )
    assert "<s>S. USER: hi ASSISTANT:\n" in capsys.readouterr().err
    # A model without any template fails before loading weights, and says how to fix it.
    bare = tmp_path / "bare"
    shutil.copytree(
        full_run, bare, ignore=shutil.ignore_patterns("llama_sft_template.*", "chat_template.jinja")
    )
    assert main(["chat", str(bare), "--prompt", "hi"]) == 2
    assert "--conv_template" in capsys.readouterr().err
    assert (
        main(
            [
                "chat",
                str(bare),
                "--prompt",
                "hi",
                "--conv_template",
                "chatml",
                "--max_new_tokens",
                "1",
                "--show_prompt",
            ]
        )
        == 0
    )
    assert "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n\n" in capsys.readouterr().err
