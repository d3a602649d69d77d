"""Load what `llama-sft train` wrote (adapter or full model) back, with its template and RoPE scaling."""

from __future__ import annotations

import json
from pathlib import Path

BASE_CONFIG = "base_model_config.json"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_trained(run_dir: str | Path, dtype=None, device: str | None = None, merge: bool = False):
    """(model, tokenizer, template) for a run directory or a plain HF model directory.

    Adapter runs load the base named in adapter_config.json with the config the run trained with
    (RoPE scaling included, saved as base_model_config.json), then apply the adapter.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..data.special_content import attach_policy
    from ..data.tokenizer import load_tokenizer
    from ..train.outputs import load_run_template

    run_dir = Path(run_dir)
    dtype = dtype or torch.float32
    tokenizer = attach_policy(load_tokenizer(str(run_dir)), run_dir)  # special tokens in content
    if is_adapter_dir(run_dir):
        from peft import PeftModel

        base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
        config = AutoConfig.from_pretrained(base)
        if (run_dir / BASE_CONFIG).exists():
            config = type(config).from_json_file(str(run_dir / BASE_CONFIG))
        model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=dtype, use_safetensors=True)
        model = PeftModel.from_pretrained(model, str(run_dir))
        if merge:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype=dtype, use_safetensors=True)
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer, load_run_template(run_dir, tokenizer)
