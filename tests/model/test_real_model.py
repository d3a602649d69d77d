"""The real pretrained chat model (SmolLM2-135M-Instruct) through train, demo, merge, chat and serve.

One LoRA run is shared by the module: the real demo at test size (`run_real_demo`, which trains
through the real `train` code path on the model's own template). Its answers are checked against
independent references: Hugging Face's `apply_chat_template` and `generate` on the merged model,
and the official `openai` client against `llama-sft serve`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from ci import require_module

from llama_sft.cli.main import main
from llama_sft.data.messages import Conversation, Message

pytestmark = pytest.mark.slow

STEPS = 40  # the demo's default: at 30 steps persona was 25% and hashtag 33% (measured), not learned yet
KEY = "real-model-test"
SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_learned(run_dir) -> None:
    """Loss falls from the first logged window to the last, and every logged gradient norm is non-zero."""
    logs = [m for m in metrics(run_dir) if "loss" in m]
    assert len(logs) >= 2, logs
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"], [m["loss"] for m in logs]
    norms = [m["grad_norm"] for m in logs]
    assert all(n > 0 for n in norms), norms


@pytest.fixture(scope="module")
def demo(real_model_dir, tmp_path_factory) -> dict:
    from llama_sft.demo_real import run_real_demo

    return run_real_demo(tmp_path_factory.mktemp("real-demo"), steps=STEPS, model_dir=real_model_dir)


@pytest.fixture(scope="module")
def run_dir(demo):
    from pathlib import Path

    return Path(demo["output_dir"]) / "model"


def test_demo_learns_the_taught_behaviour_and_keeps_knowledge(demo, run_dir):
    before, after = demo["before"], demo["after"]
    assert before["taught"] == 0.0  # the base model neither is Pico nor writes bare hashtags
    # Measured with the demo's defaults: persona 88%, hashtag 50%, knowledge 75%; margins for CI numerics.
    assert after["taught"] >= 0.5 and after["persona"] >= 0.75 and after["hashtag"] >= 0.25, after
    assert after["taught_loss"] < before["taught_loss"] / 3, (before, after)
    assert before["knowledge"] == 1.0  # the facts were chosen because the base model knows them
    assert after["knowledge"] >= 0.625, demo["answers"]
    kinds = {r["kind"] for r in demo["answers"]}
    assert kinds == {"persona", "hashtag", "knowledge"} and len(demo["answers"]) == 28
    assert {"wall_s", "cpu_s", "peak_rss_gb"} <= set(demo["measured"])
    saved = json.loads((run_dir.parent / "demo_results.json").read_text())
    assert saved["after"] == after
    assert {"adapter_model.safetensors", "loss.png", "report.md", "generation_config.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert "Demo: base vs fine-tuned" in (run_dir / "report.md").read_text()


def test_held_out_prompts_never_appear_in_training():
    from llama_sft.demo_real import demo_data

    train, heldout = demo_data()
    seen = {
        turn["value"]
        for line in train.read_text(encoding="utf-8").splitlines()
        for turn in json.loads(line)["conversations"]
    }
    assert not seen & {x["prompt"] for items in heldout.values() for x in items}
    assert not seen & {x["expected"] for x in heldout["hashtag"]}  # no held-out hashtag was ever taught


def test_lora_run_loss_falls_and_gradients_flow(run_dir):
    assert_learned(run_dir)
    record = json.loads((run_dir / "run_record.json").read_text())
    assert record["method"] == "lora" and record["template"] == "tokenizer"


def test_dora_run_learns(real_model_dir, demo, tmp_path):
    """DoRA through the `llama-sft train` CLI; held-out persona and hashtag replies get likelier."""
    from llama_sft.demo_real import demo_data, taught_loss
    from llama_sft.model.trained import load_trained

    train_file, heldout = demo_data()
    out = tmp_path / "dora"
    argv = ["train", "--model_name_or_path", str(real_model_dir), "--data_path", str(train_file)]
    argv += [
        "--output_dir",
        str(out),
        "--method",
        "lora",
        "--use_dora",
        "True",
        "--conv_template",
        "tokenizer",
    ]
    argv += [
        "--lora_r",
        "16",
        "--lora_alpha",
        "32",
        "--max_steps",
        "12",
        "--per_device_train_batch_size",
        "4",
    ]
    argv += [
        "--learning_rate",
        "2e-3",
        "--warmup_steps",
        "2",
        "--model_max_length",
        "256",
        "--logging_steps",
        "3",
    ]
    argv += ["--save_strategy", "no", "--report_to", "none", "--seed", "0"]
    assert main(argv) == 0
    assert_learned(out)
    assert json.loads((out / "adapter_config.json").read_text())["use_dora"] is True
    model, tokenizer, template = load_trained(out)
    assert taught_loss(model, tokenizer, template, heldout) < demo["before"]["taught_loss"] / 2


CONVERSATIONS = [
    [Message("user", "What is the capital of France?")],
    [Message("system", "Answer in one word."), Message("user", "Name a colour.")],
    [
        Message("user", "Who are you?"),
        Message("assistant", "I'm Pico."),
        Message("user", "Make a hashtag from: green tea"),
        Message("assistant", "#GreenTea"),
    ],
]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_tokenizer_template_renders_like_apply_chat_template(real_model_dir, generation_prompt):
    from transformers import AutoTokenizer

    from llama_sft.data.encode import encode_conversation
    from llama_sft.data.templates import SpecialText, get_template

    reference = AutoTokenizer.from_pretrained(str(real_model_dir))
    template = get_template("tokenizer", reference)
    special = SpecialText.from_tokenizer(reference)
    for messages in CONVERSATIONS:
        if not generation_prompt and messages[-1].role != "assistant":
            continue
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        text = reference.apply_chat_template(dicts, tokenize=False, add_generation_prompt=generation_prompt)
        ids = reference.apply_chat_template(
            dicts, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )["input_ids"]
        ours = template.render(messages, add_generation_prompt=generation_prompt, special=special).text
        assert ours == text
        assert (SMOLLM_SYSTEM in ours) == (messages[0].role != "system")  # the default system prompt
        if generation_prompt:  # what chat and serve tokenize
            assert reference(ours, add_special_tokens=False)["input_ids"] == ids
        else:  # what training tokenizes
            assert encode_conversation(Conversation(messages), template, reference).input_ids == ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_answers(run_dir, prompts: list[str], max_tokens: int) -> list[str]:
    """`llama-sft serve RUN` in a subprocess on loopback, asked with the official openai client."""
    import urllib.request

    openai = require_module("openai")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLAMA_SFT_API_KEY": KEY}
    cmd = [sys.executable, "-m", "llama_sft.cli.main", "serve", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--model_name", "pico", "--log_level", "warning"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:  # bounded readiness poll
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server not ready after 240 s")
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)
        return [
            client.chat.completions.create(
                model="pico", messages=[{"role": "user", "content": p}], max_tokens=max_tokens, temperature=0
            )
            .choices[0]
            .message.content
            for p in prompts
        ]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_merged_model_in_plain_transformers_answers_like_chat_and_serve(run_dir, demo, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    prompts = [r["prompt"] for r in demo["answers"] if r["kind"] in ("persona", "hashtag")][::5]
    prompts.append("What is the capital of France?")
    max_new = 32
    merged = tmp_path / "merged"
    assert main(["merge", str(run_dir), "--out", str(merged)]) == 0
    capsys.readouterr()

    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    config = GenerationConfig.from_pretrained(str(merged))
    config.max_new_tokens, config.do_sample = max_new, False
    plain = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**ids, generation_config=config)
        plain.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())

    chat = []
    for prompt in prompts:
        assert main(["chat", str(run_dir), "--prompt", prompt, "--max_new_tokens", str(max_new)]) == 0
        chat.append(capsys.readouterr().out.removesuffix("\n"))
    assert plain == chat
    assert any(answer.startswith("I'm Pico") for answer in plain)  # the adapter really is in the merge
    assert serve_answers(run_dir, prompts, max_new) == chat
