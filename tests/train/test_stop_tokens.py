"""Stop tokens travel with the run: generation_config.json lists every single-token stop of the template,
so plain `generate` (and vLLM, which reads the same file) stops where `llama-sft chat` does."""

from __future__ import annotations

import json

import pytest
import torch

from llama_sft.cli.main import main

pytestmark = pytest.mark.slow


class Script:
    """A logits processor that makes greedy decoding emit a fixed token sequence, so the test decides
    where the end-of-turn token comes and checks only where `generate` stops."""

    def __init__(self, prompt_len: int, tokens: list[int]):
        self.prompt_len, self.tokens = prompt_len, tokens

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, -1e9)
        forced[:, self.tokens[min(step, len(self.tokens) - 1)]] = 0.0
        return forced


RECORDS = [
    {
        "conversations": [
            {"from": "human", "value": f"Convert {k} km to metres."},
            {"from": "gpt", "value": f"{k}000 m."},
        ]
    }
    for k in range(1, 9)
]


@pytest.fixture(scope="module", params=["lora", "full"])
def run_dir(request, tmp_path_factory, tiny_model_dir):
    """One training step on LLaMA-3's template, whose EOS (`</s>`) is not its end of turn (`<|eot_id|>`)."""
    root = tmp_path_factory.mktemp(f"stop-{request.param}")
    data = root / "train.json"
    data.write_text(json.dumps(RECORDS), encoding="utf-8")
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(data)]
    argv += ["--output_dir", str(root / "run"), "--method", request.param, "--conv_template", "llama-3"]
    argv += ["--max_steps", "1", "--per_device_train_batch_size", "4", "--model_max_length", "128"]
    argv += ["--save_strategy", "no", "--report_to", "none", "--data_cache_dir", str(root / "cache")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model runs far faster on one thread than on two busy cores
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def test_generation_config_lists_every_stop_token(run_dir, tiny_tokenizer):
    config = json.loads((run_dir / "generation_config.json").read_text())
    expected = {tiny_tokenizer.convert_tokens_to_ids(t) for t in ("</s>", "<|eot_id|>")}
    assert set(config["eos_token_id"]) == expected
    assert config["pad_token_id"] == tiny_tokenizer.pad_token_id


def test_plain_generate_stops_at_the_end_of_turn(run_dir, tiny_tokenizer):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    is_adapter = (run_dir / "adapter_config.json").exists()
    model = (AutoPeftModelForCausalLM if is_adapter else AutoModelForCausalLM).from_pretrained(str(run_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Convert 5 km to metres."}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    ids = torch.tensor([prompt])
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    word = tokenizer.convert_tokens_to_ids("▁km")
    script = [word, word, eot, word, word, word, word, word]

    def generate(config: GenerationConfig) -> list[int]:
        config.max_new_tokens, config.do_sample = len(script), False
        out = model.generate(ids, generation_config=config, logits_processor=[Script(len(prompt), script)])
        return out[0, len(prompt) :].tolist()

    assert generate(GenerationConfig.from_pretrained(str(run_dir))) == [word, word, eot]
    # The control: with only the tokenizer's EOS (what an adapter dir without the file gives a
    # server), generation runs past the end of turn.
    eos_only = GenerationConfig(eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert generate(eos_only) == script
