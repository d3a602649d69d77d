"""`llama-sft merge`: one standalone model directory that any HF-based server loads as trained.

The output holds the merged weights (safetensors), the config the run trained with (RoPE scaling
included), a tokenizer whose `chat_template` is the training template, the template file and run
record (so chat, eval and serve read them back), and a generation_config whose EOS ids include
the template's single-token stop strings.

Before writing, the merged model's logits are compared with the adapter's on its base
(`merge_check`); beyond the stated tolerance nothing is written.

QLoRA: the adapter was trained against the 4-bit base, i.e. against dequant(NF4(W)), not W. The
default merges into exactly that: the base is loaded in 4-bit as in training (on the GPU, or on the
CPU with bitsandbytes >= 0.50), dequantized to the compute dtype the run recorded, and the adapter
is merged there, so the merged model matches the trained one up to rounding the sum to that dtype
(float32 on CPU: ~1e-5 in the logits; bfloat16: closely, not bit for bit). `--qlora_base original`
merges into the unquantized W instead: its outputs differ from the trained model by the NF4
quantization error, usually the larger difference.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from ..config import ConfigError
from ..data.templates import SpecialText
from ..data.tokenizer import save_tokenizer
from ..model.trained import BASE_CONFIG, is_adapter_dir
from ..rundir import with_stop_ids
from ..train.outputs import RUN_RECORD, TEMPLATE_JINJA, TEMPLATE_YAML, load_run_template, read_run_record
from .merge_check import check_inputs, compare, default_tolerance, logits_on

log = logging.getLogger("llama_sft")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QLORA_BASES = ("dequantized", "original")


def _resolved(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "config.resolved.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}


def compute_dtype_of_run(run_dir: Path) -> torch.dtype:
    """The dtype the run computed in (as `model.load.compute_dtype` resolved it)."""
    from ..model.load import compute_dtype

    resolved = _resolved(run_dir)
    model, training = resolved.get("model", {}), resolved.get("training", {})
    run = SimpleNamespace(
        model=SimpleNamespace(torch_dtype=model.get("torch_dtype", "auto")),
        training=SimpleNamespace(bf16=bool(training.get("bf16")), fp16=bool(training.get("fp16"))),
    )
    return compute_dtype(run)


def _base_config(run_dir: Path):
    from transformers import AutoConfig

    base = json.loads((run_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    config = AutoConfig.from_pretrained(base)
    if (run_dir / BASE_CONFIG).exists():
        config = type(config).from_json_file(str(run_dir / BASE_CONFIG))
    return base, config


def qlora_compute_dtype_of_run(run_dir: Path, record: dict) -> torch.dtype:
    """The dtype the run's 4-bit layers computed in: recorded by training since CPU QLoRA, else the
    rule training applied (float32 runs compute in bfloat16 on CUDA)."""
    from ..model.quantize import qlora_compute_dtype

    recorded = (record.get("quantization") or {}).get("compute_dtype")
    if recorded in DTYPES:
        return DTYPES[recorded]
    return qlora_compute_dtype(compute_dtype_of_run(run_dir))


def quantized_qlora_base(run_dir: Path, compute: torch.dtype):
    """The base as the QLoRA run saw it: NF4 with double quantization, computing in `compute`."""
    from transformers import AutoModelForCausalLM

    from ..model.quantize import check_bitsandbytes, keep_training_layout, quantization_config

    try:
        check_bitsandbytes()
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}. Or pass --qlora_base original to merge into the unquantized base weights (its "
            "outputs then differ from the trained model by the NF4 quantization error)."
        ) from None
    base, config = _base_config(run_dir)
    load_dtype = compute_dtype_of_run(run_dir)
    model = AutoModelForCausalLM.from_pretrained(
        base,
        config=config,
        quantization_config=quantization_config(load_dtype, compute=compute),
        dtype=load_dtype,
        device_map={"": 0} if torch.cuda.is_available() else {"": "cpu"},
        use_safetensors=True,
    )
    keep_training_layout(model)  # the reference forward must not repack the weights merge dequantizes
    return model


def load_merged(
    run_dir: str | Path,
    dtype: str = "auto",
    qlora_base: str = "dequantized",
    tolerance: float | None = None,
):
    """(merged model, tokenizer, template, notes) for a run directory or a model directory. Adapter
    runs are checked against the unmerged adapter first (`merge_check`): MergeCheckFailed beyond
    `tolerance` (default: by dtype)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ..data.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    if qlora_base not in QLORA_BASES:
        raise ConfigError(f"--qlora_base {qlora_base!r}: choose {' or '.join(QLORA_BASES)}")
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    record = read_run_record(run_dir) or {}
    tokenizer = load_tokenizer(str(run_dir))
    template = load_run_template(run_dir, tokenizer)
    notes = {
        "source": str(run_dir),
        "method": record.get("method", "lora" if is_adapter_dir(run_dir) else "full"),
    }
    if not is_adapter_dir(run_dir):
        if not (run_dir / "config.json").exists():
            raise FileNotFoundError(
                f"{run_dir}: neither an adapter run (adapter_config.json) nor a model (config.json)"
            )
        model = AutoModelForCausalLM.from_pretrained(
            str(run_dir), dtype=DTYPES.get(dtype, "auto"), use_safetensors=True
        )
        notes["merge"] = "full fine-tuning: weights copied (nothing to merge)"
        return model, tokenizer, template, notes
    base, config = _base_config(run_dir)
    inputs = check_inputs(template, tokenizer)
    if notes["method"] == "qlora" and qlora_base == "dequantized":
        compute = qlora_compute_dtype_of_run(run_dir, record)
        target = DTYPES.get(dtype) or compute
        adapter = PeftModel.from_pretrained(quantized_qlora_base(run_dir, compute), str(run_dir))
        reference = logits_on(adapter, inputs)
        plain = adapter.unload().dequantize(dtype=target).to(target)
        model = PeftModel.from_pretrained(plain, str(run_dir)).merge_and_unload()
        dtypes = (compute, target)
        name = str(target).removeprefix("torch.")
        notes["merge"] = (
            f"QLoRA: base loaded in 4-bit NF4 as in training (compute dtype {str(compute).removeprefix('torch.')}), "
            f"dequantized to {name} and merged; checked against the adapter on the 4-bit base"
        )
    else:
        target = DTYPES.get(dtype) or getattr(config, "dtype", None) or torch.float32
        if isinstance(target, str):
            target = DTYPES.get(target, torch.float32)
        model = AutoModelForCausalLM.from_pretrained(base, config=config, dtype=target, use_safetensors=True)
        adapter = PeftModel.from_pretrained(model, str(run_dir))
        reference = logits_on(adapter, inputs)
        model = adapter.merge_and_unload()
        dtypes = (target,)
        notes["merge"] = f"LoRA merged into the base in {str(target).removeprefix('torch.')}"
        if notes["method"] == "qlora":
            notes["merge"] += (
                " (QLoRA run merged into the original, unquantized base: outputs differ from the trained "
                "model by the NF4 quantization error)"
            )
    limit = tolerance if tolerance is not None else default_tolerance(*dtypes)
    notes["check"] = compare(reference, logits_on(model, inputs), limit)
    notes["base_model"] = base
    return model, tokenizer, template, notes


def merge_run(
    run_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    qlora_base: str = "dequantized",
    overwrite: bool = False,
    tolerance: float | None = None,
) -> dict:
    """Check, then write the merged model to `out_dir`; returns what was done (also saved in the run
    record). Raises MergeCheckFailed, writing nothing, when the merge does not reproduce the adapter."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError("--out must differ from the run directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; pass --overwrite or choose another --out")
    model, tokenizer, template, notes = load_merged(run_dir, dtype, qlora_base, tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # training turned the KV cache off; servers want it on
    # the template's stop ids, then any EOS ids the base already listed (rundir, as training writes them)
    model.generation_config = with_stop_ids(model.generation_config, template, tokenizer)
    stops = model.generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops)
    model.save_pretrained(str(out_dir))
    save_tokenizer(tokenizer, template, out_dir)
    for name in (TEMPLATE_YAML, TEMPLATE_JINJA):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out_dir / name)
    record = read_run_record(run_dir) or {"template": template.name}
    notes.update(
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        rope_parameters=getattr(model.config, "rope_parameters", None),
        stop_strings=list(template.stop(SpecialText.from_tokenizer(tokenizer))),
        stop_token_ids=stops,
    )
    record["export"] = notes
    (out_dir / RUN_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return notes
