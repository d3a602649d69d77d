"""`llama-sft merge`: the merged model equals base + adapter, and carries config, template and stop tokens."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_merged_lora_logits_equal_base_plus_adapter(lora_run, merged_lora):
    from transformers import AutoModelForCausalLM

    from llama_sft.data.messages import Message
    from llama_sft.generation import build_prompt
    from llama_sft.model.trained import load_trained

    adapter, tokenizer, template = load_trained(lora_run, dtype=torch.float32, merge=False)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_lora), dtype=torch.float32)
    assert merged.dtype == torch.float32
    text = build_prompt(template, tokenizer, [Message("user", "Convert 47 km to metres.")]) + " 47 km is"
    unmerged_logits = logits(adapter, tokenizer, text)
    torch.testing.assert_close(logits(merged, tokenizer, text), unmerged_logits, rtol=0, atol=1e-5)
    # ...and the adapter matters, so the tolerance above means something.
    with adapter.disable_adapter():
        assert (logits(adapter, tokenizer, text) - unmerged_logits).abs().max() > 1e-3


def test_merged_directory_is_standalone(lora_run, merged_lora):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from llama_sft.data.templates import BUILTIN
    from llama_sft.generation import load_for_inference

    names = sorted(p.name for p in merged_lora.iterdir())
    assert names == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "llama_sft_template.yaml",
        "model.safetensors",
        "run_record.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = AutoConfig.from_pretrained(str(merged_lora))
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 2.0
    assert config.max_position_embeddings == 1024 and config.use_cache is True
    tokenizer = AutoTokenizer.from_pretrained(str(merged_lora))
    assert tokenizer.chat_template == BUILTIN["vicuna_v1.1"].to_jinja()
    eos = GenerationConfig.from_pretrained(str(merged_lora)).eos_token_id
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    record = json.loads((merged_lora / "run_record.json").read_text())
    assert record["template"] == "vicuna_v1.1" and record["export"]["method"] == "lora"
    assert record["export"]["stop_strings"] == ["</s>", "USER:"]
    _, _, template = load_for_inference(merged_lora)
    assert template == BUILTIN["vicuna_v1.1"]


def test_merge_full_run_and_refuse_overwrite(full_run, tmp_path):
    from llama_sft.cli.main import main
    from llama_sft.model.trained import load_trained

    out = tmp_path / "merged"
    assert main(["merge", str(full_run), "--out", str(out), "--json"]) == 0
    model, tokenizer, _ = load_trained(full_run)
    copy, _, _ = load_trained(out)
    torch.testing.assert_close(
        logits(copy, tokenizer, "<s>USER: hi ASSISTANT:"),
        logits(model, tokenizer, "<s>USER: hi ASSISTANT:"),
        rtol=0,
        atol=0,
    )
    assert main(["merge", str(full_run), "--out", str(out)]) == 2  # not empty, no --overwrite
    assert main(["merge", str(full_run), "--out", str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_merge_refuses_to_write_a_merge_that_does_not_reproduce_the_adapter(lora_run, tmp_path, monkeypatch):
    """A merge that lost the adapter (here: merge_and_unload that drops it) still loads and talks;
    the check sees it in the logits, says by how much and against which tolerance, and writes nothing."""
    from peft.tuners.lora import LoraModel

    from llama_sft.cli.main import main
    from llama_sft.export import merge_run
    from llama_sft.export.merge_check import MergeCheckFailed

    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    out = tmp_path / "out"
    with pytest.raises(MergeCheckFailed, match=r"differ from the adapter's by up to .* \(tolerance 0.001;"):
        merge_run(lora_run, out)
    assert not out.exists()
    # --tolerance overrides the limit (here loose enough to let this bad merge through).
    notes = merge_run(lora_run, out, tolerance=1e6)
    assert notes["check"]["max_abs_logit_diff"] > 1e-3 and (out / "model.safetensors").exists()
    assert (
        main(["merge", str(lora_run), "--out", str(tmp_path / "cli")]) == 2
    )  # the CLI: exit 2, nothing written
    assert not (tmp_path / "cli").exists()


def test_merge_check_is_recorded_and_its_tolerance_is_in_help(merged_lora, capsys):
    from llama_sft.cli.main import main
    from llama_sft.export.merge_check import TOLERANCE

    check = json.loads((merged_lora / "run_record.json").read_text())["export"]["check"]
    assert check["max_abs_logit_diff"] <= 1e-5 and check["tolerance"] == TOLERANCE[torch.float32] == 1e-3
    assert check["prompts"] == 3 and check["top1_agreement"] == 1.0
    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{TOLERANCE[torch.float32]:g} for a float32 merge" in text
    assert f"{TOLERANCE[torch.bfloat16]:g} for bfloat16/float16" in text
