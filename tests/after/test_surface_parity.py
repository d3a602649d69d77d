"""Chat, serve, eval and the merged tokenizer build the training prompt, for every template.

For each built-in template a run directory is written the way `llama-sft train` writes one
(tokenizer with chat_template, template file); each surface then loads the template back the way
it does for a real run. The reference is the training rendering of the whole conversation, cut
where the last reply's supervised span starts: exactly the context the model learned to answer.
Text and ids, with and without a system message.
"""

from __future__ import annotations

import pytest

from llama_sft.data.encode import encode_conversation
from llama_sft.data.messages import Conversation, Message
from llama_sft.data.templates import BUILTIN, SpecialText

CONVERSATIONS = {
    "multi": [
        ("user", "Hi! Convert 47 km to metres."),
        ("assistant", "47 km is 47000 m."),
        ("user", "And in centimetres?"),
        ("assistant", "47 km is 4700000 cm."),
    ],
    "system": [
        ("system", "Be brief."),
        ("user", "Who are you?"),
        ("assistant", "I am Quill."),
        ("user", "Say 'amber river' twice."),
        ("assistant", "amber river amber river"),
    ],
    "unicode": [("user", "Héllo wörld, 你好 🙂\ttab"), ("assistant", "Ça va 👍")],
}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_tokenizer):
    """One run-like directory per template: tokenizer (chat_template set) and template file."""
    from llama_sft.train.outputs import save_template

    dirs, original = {}, tiny_tokenizer.chat_template
    for name, template in BUILTIN.items():
        path = tmp_path_factory.mktemp(f"run-{name}")
        tiny_tokenizer.chat_template = template.to_jinja()
        tiny_tokenizer.save_pretrained(path)
        save_template(template, path)
        dirs[name] = path
    tiny_tokenizer.chat_template = original
    return dirs


@pytest.fixture(scope="module")
def merged_tokenizer_dirs(tmp_path_factory, run_dirs):
    """The tokenizer `llama-sft merge` writes, per template."""
    from llama_sft.data.tokenizer import load_tokenizer
    from llama_sft.export import save_tokenizer
    from llama_sft.train.outputs import load_run_template

    out = {}
    for name, path in run_dirs.items():
        tokenizer = load_tokenizer(str(path))
        target = tmp_path_factory.mktemp(f"merged-{name}")
        save_tokenizer(tokenizer, load_run_template(path, tokenizer), target)
        out[name] = target
    return out


@pytest.mark.parametrize("case", list(CONVERSATIONS))
@pytest.mark.parametrize("name", list(BUILTIN))
def test_every_surface_builds_the_training_prompt(name, case, run_dirs, merged_tokenizer_dirs):
    from transformers import AutoTokenizer

    from llama_sft.cli.chat_cmd import ChatSession
    from llama_sft.data.tokenizer import load_tokenizer
    from llama_sft.evaluate import eval_prompt
    from llama_sft.serve import prompt_for
    from llama_sft.train.outputs import load_run_template

    tokenizer = load_tokenizer(str(run_dirs[name]))
    template = load_run_template(run_dirs[name], tokenizer)
    assert template == BUILTIN[name]
    messages = [Message(r, c) for r, c in CONVERSATIONS[case]]
    conversation = Conversation(messages)

    # Training: the rendering, its labels, and the context before the last reply.
    rendered = template.render(messages, special=SpecialText.from_tokenizer(tokenizer))
    training_prompt = rendered.text[: rendered.spans[-1][0]]
    training_ids = encode_conversation(conversation, template, tokenizer).input_ids

    # chat: a session whose history holds the earlier turns.
    system = messages[0].content if messages[0].role == "system" else None
    turns = messages[1:] if system is not None else messages
    session = ChatSession(system=system, history=list(turns[:-2]))
    chat = session.prompt(template, tokenizer, turns[-2].content)
    # serve: OpenAI-style messages through the server's request model.
    serve = prompt_for(template, tokenizer, [{"role": m.role, "content": m.content} for m in messages[:-1]])
    # eval: the conversation up to its last user turn.
    evaluate = eval_prompt(template, tokenizer, conversation)
    # merged model: what vLLM / TGI do, a plain AutoTokenizer and apply_chat_template.
    hf = AutoTokenizer.from_pretrained(str(merged_tokenizer_dirs[name]))
    as_dicts = [{"role": m.role, "content": m.content} for m in messages]
    merged = hf.apply_chat_template(as_dicts[:-1], tokenize=False, add_generation_prompt=True)

    for surface, text in {"chat": chat, "serve": serve, "eval": evaluate, "merged": merged}.items():
        assert text == training_prompt, f"{surface} prompt differs from training for {name}/{case}"

    prompt_ids = tokenizer(training_prompt, add_special_tokens=False)["input_ids"]
    assert training_ids[: len(prompt_ids)] == prompt_ids  # the prompt is a token prefix of the training row
    merged_ids = hf.apply_chat_template(as_dicts[:-1], tokenize=True, add_generation_prompt=True)
    merged_ids = merged_ids["input_ids"] if not isinstance(merged_ids, list) else merged_ids
    assert list(merged_ids) == prompt_ids
    # Without a generation prompt the merged tokenizer renders the full training row, ids included.
    assert hf.apply_chat_template(as_dicts, tokenize=False) == rendered.text
    assert hf(rendered.text, add_special_tokens=False)["input_ids"] == training_ids


def test_merged_tokenizer_loads_unchanged_in_a_plain_hf_server(merged_tokenizer_dirs, tiny_tokenizer):
    """A class-specific loader may rebuild the normalizer; the export makes AutoTokenizer read tokenizer.json."""
    import json

    from transformers import AutoTokenizer

    path = merged_tokenizer_dirs["vicuna_v1.1"]
    hf = AutoTokenizer.from_pretrained(str(path))
    text = "<s>A chat. USER: Hello there, 12 km? ASSISTANT:"
    assert (
        hf(text, add_special_tokens=False)["input_ids"]
        == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    assert hf.chat_template == BUILTIN["vicuna_v1.1"].to_jinja()
    assert json.loads((path / "tokenizer_config.json").read_text())["eos_token"] == tiny_tokenizer.eos_token
