"""Typed run configuration: model, data, LoRA, training (transformers' TrainingArguments) and
distributed settings, from a YAML file and/or command-line flags.

Flag names are FastChat's (`--data_path`, `--lora_r`, `--q_lora True`, ...) so its scripts run
unchanged, plus the two names it used that transformers has since renamed. Unknown keys, in YAML
or on the command line, are errors that name the closest valid key. Rules that span fields live
in `RunConfig.validate`, which runs before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from .exceptions import ConfigError  # re-exported: llama_sft.config.ConfigError

METHODS = ("full", "lora", "qlora")
ROPE_TYPES = ("linear", "dynamic", "yarn", "llama3")
PACKING = ("none", "padded", "packed")
LOSS_IMPLS = ("chunked", "plain", "liger")  # train/loss.py
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FLAG_ALIASES = {
    "--evaluation_strategy": "--eval_strategy",
    # transformers 5.24 renamed gradient_checkpointing* to activation_checkpointing* and warns on every
    # run that sets the old field; FastChat's scripts (and our old YAMLs) still use the old names.
    "--gradient_checkpoint": "--activation_checkpointing",
    "--gradient_checkpointing": "--activation_checkpointing",
    "--gradient_checkpointing_kwargs": "--activation_checkpointing_kwargs",
}


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    model_name_or_path: str = _help("Hub id or local directory of the base model.", default="")
    trust_remote_code: bool = _help(
        "Run code shipped with the model. Off unless you trust the source.", default=False
    )
    flash_attn: bool = _help("Use flash_attention_2 (needs the flash-attn package and a GPU).", default=False)
    attn_implementation: str | None = _help(
        "sdpa, eager or flash_attention_2; default: sdpa, or FA2 with --flash_attn.", default=None
    )
    torch_dtype: str = _help(
        "Weights dtype: auto, bfloat16, float16 or float32 (auto follows --bf16/--fp16).", default="auto"
    )
    rope_scaling_type: str | None = _help(
        f"RoPE scaling for longer contexts: {', '.join(ROPE_TYPES)}.", default=None
    )
    rope_scaling_factor: float | None = _help(
        "RoPE scaling factor; default ceil(model_max_length / max_position_embeddings) when that is > 1.",
        default=None,
    )


@dataclass
class DataConfig:
    data_path: list[str] | None = _help(
        "Training data: JSON/JSONL/parquet files or dataset dirs (one or more).", default=None
    )
    eval_data_path: list[str] | None = _help("Evaluation data, same formats.", default=None)
    eval_ratio: float = _help(
        "Hold out this share of the training data for eval when no eval_data_path.", default=0.0
    )
    data_format: str = _help("auto (per record), sharegpt, openai or alpaca.", default="auto")
    conv_template: str = _help(
        "Chat template: a built-in name (see `llama-sft templates`), 'tokenizer', or a .yaml/.jinja file.",
        default="vicuna_v1.1",
    )
    model_max_length: int = _help(
        "Longest sequence in tokens; longer conversations are truncated (and counted).", default=2048
    )
    masking: str = _help(
        "What to learn: train_on_assistant (every reply), train_on_last (last reply), train_on_all.",
        default="train_on_assistant",
    )
    train_on_reasoning: bool = _help(
        "Train on the final reply's reasoning trace (<think>...</think> or reasoning_content); False keeps "
        "it as context and trains on the answer only. Traces of earlier turns are dropped either way.",
        default=True,
    )
    packing: str = _help(
        "Batching: none (pad to model_max_length, like FastChat), padded (to the longest in a batch), "
        "packed (several conversations per row, no cross-attention; then per_device_train_batch_size "
        "counts packed rows of up to model_max_length tokens).",
        default="padded",
    )
    lazy_preprocess: bool = _help(
        "Accepted for FastChat compatibility; data is always tokenized once and cached.", default=False
    )
    skip_bad: bool = _help(
        "Skip records with errors instead of stopping (they are counted and reported).", default=False
    )
    strict: bool = _help(
        "Treat repairs (dropped leading assistant / trailing user turns) as errors.", default=False
    )
    special_tokens_in_content: str = _help(
        "Special-token strings of the tokenizer (</s>, <|eot_id|>, ...) inside message content: warn (report; "
        "they become control tokens), error (refuse those records; --strict implies it) or split (keep them "
        "as plain text; chat, serve and eval read the policy back from the run).",
        default="warn",
    )
    preprocess_num_workers: int = _help(
        "Processes for tokenization of large files (1 = in process).", default=1
    )
    data_cache_dir: str | None = _help(
        "Where tokenized data is cached (default ~/.cache/llama-sft/data).", default=None
    )


@dataclass
class LoraConfig:
    method: str = _help("full, lora or qlora (--q_lora True also selects qlora).", default="lora")
    lora_r: int = _help("LoRA rank.", default=8)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", default=16)
    lora_dropout: float = _help("Dropout on the LoRA input.", default=0.05)
    lora_target_modules: list[str] = _help(
        "Modules to adapt (space or comma separated).", default_factory=lambda: list(DEFAULT_TARGETS)
    )
    lora_weight_path: str = _help("Start from an existing adapter directory.", default="")
    lora_bias: str = _help("none, all or lora_only.", default="none")
    q_lora: bool = _help(
        "QLoRA: load the base in 4-bit NF4 (bitsandbytes) and train LoRA on top.", default=False
    )
    use_dora: bool = _help("DoRA (weight-decomposed LoRA).", default=False)


@dataclass
class SFTTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments with defaults for SFT (every field is a flag)."""

    output_dir: str | None = field(
        default="runs/llama-sft", metadata={"help": "Where checkpoints and the run record go."}
    )
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer (transformers name)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: our collator reads its own columns."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "group_by_length (default: similar lengths share a batch, less padding), random, "
            "sequential or batch_rebalance. Length grouping orders each mega-batch of 50 batches by "
            "length; on small, very uniform datasets use random."
        },
    )
    loss_impl: str = field(
        default="chunked",
        metadata={
            "help": "Training loss: chunked (default; exact cross-entropy through lm_head a few hundred "
            "supervised tokens at a time, never the full tokens x vocab logits), plain (transformers' "
            "loss on full logits) or liger (liger-kernel's fused linear cross-entropy; needs the package "
            "and a CUDA GPU). Evaluation always uses the model's own loss. See train/loss.py."
        },
    )
    activation_offloading: bool = field(
        default=False,
        metadata={
            "help": "Keep the tensors saved for backward in CPU RAM (pinned) instead of GPU memory, "
            "copied back when backward needs them: long sequences fit at the cost of PCIe traffic. "
            "Combine with --gradient_checkpointing to offload only each layer's input."
        },
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Optional total batch; gradient_accumulation_steps is derived as global / (per_device * world)."
        },
    )


@dataclass
class DistributedConfig:
    """YAML section only; each key is the TrainingArguments field of the same name."""

    deepspeed: str | None = None
    fsdp: str | None = None
    fsdp_config: str | None = None
    ddp_backend: str | None = None
    ddp_find_unused_parameters: bool | None = None


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "lora": LoraConfig,
    "training": SFTTrainingArguments,
    "distributed": DistributedConfig,
}
PARSED = (ModelConfig, DataConfig, LoraConfig, SFTTrainingArguments)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def all_flag_names() -> list[str]:
    return [n for cls in PARSED for n in field_names(cls)]


def unknown_key_error(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def flatten_yaml(data: dict, source: str) -> dict[str, Any]:
    """Sections (model/data/lora/training/distributed) or flat keys -> one flat, checked dict."""
    flat: dict[str, Any] = {}
    valid_flat = all_flag_names()
    for key, value in (data or {}).items():
        if key in SECTIONS and isinstance(value, dict):
            valid = field_names(SECTIONS[key])
            for sub, sub_value in value.items():
                if sub not in valid:
                    raise unknown_key_error(sub, valid, f"{source} [{key}]")
                flat[sub] = sub_value
        elif key in valid_flat:
            flat[key] = value
        else:
            raise unknown_key_error(key, valid_flat + list(SECTIONS), source)
    for old, new in FLAG_ALIASES.items():  # old key names in YAML, as on the command line
        if old[2:] in flat:
            flat.setdefault(new[2:], flat.pop(old[2:]))
    # A scalar where a list is expected ("data_path: train.json") would later be iterated by character.
    for cls in (ModelConfig, DataConfig, LoraConfig):
        for f in dataclasses.fields(cls):
            if str(f.type).startswith("list") and isinstance(flat.get(f.name), str):
                flat[f.name] = [flat[f.name]]
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections or keys")
    return resolve_config_paths(flatten_yaml(data, str(path)), path)


# Keys naming files a run reads. In a config file they are relative to that file, so a config runs
# the same from any directory (`deepspeed: deepspeed/zero2.json` next to configs/*.yaml). Outputs
# (output_dir, data_cache_dir) stay relative to where the run starts, like every flag.
CONFIG_RELATIVE = (
    "data_path",
    "eval_data_path",
    "deepspeed",
    "fsdp_config",
    "lora_weight_path",
    "conv_template",
)


def resolve_config_paths(flat: dict[str, Any], config_file: Path) -> dict[str, Any]:
    base = config_file.resolve().parent

    def resolve(value: Any, key: str) -> Any:
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            return value
        if key == "conv_template" and not value.endswith((".yaml", ".yml", ".jinja", ".j2")):
            return value  # a template name, not a file
        if key == "fsdp_config" and not value.endswith(".json"):
            return value
        return str(base / value)

    for key in CONFIG_RELATIVE:
        if key in flat:
            value = flat[key]
            flat[key] = [resolve(v, key) for v in value] if isinstance(value, list) else resolve(value, key)
    model = flat.get("model_name_or_path")
    if isinstance(model, str) and model and (base / model).is_dir():
        flat["model_name_or_path"] = str(base / model)  # a local directory beside the config (else a hub id)
    return flat


def normalize_argv(argv: list[str]) -> list[str]:
    """Old FastChat names -> current ones; `--flag=value` kept as is."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(FLAG_ALIASES.get(name, name) + eq + value)
    return out


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig
    training: SFTTrainingArguments
    notes: list[str] = field(default_factory=list)  # adjustments made while parsing, shown at start

    def to_dict(self) -> dict[str, Any]:
        training = {k: v for k, v in self.training.to_dict().items() if not k.startswith("_")}
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "lora": dataclasses.asdict(self.lora),
            "training": training,
        }

    def validate(self, world_size: int = 1, max_position_embeddings: int | None = None) -> RunConfig:
        """Cross-field rules, before any weights are loaded. Resolves derived values in place."""
        from .data.templates import get_template

        m, d, lora, t = self.model, self.data, self.lora, self.training
        if lora.q_lora:
            if lora.method == "full":
                raise ConfigError(
                    "--q_lora True with --method full: QLoRA trains adapters on a 4-bit base; use --method qlora "
                    "(or drop --q_lora for full fine-tuning)."
                )
            lora.method = "qlora"
        if lora.method not in METHODS:
            raise ConfigError(f"--method {lora.method!r}: choose one of {', '.join(METHODS)}")
        lora.lora_target_modules = [x for item in lora.lora_target_modules for x in str(item).split(",") if x]
        if lora.lora_bias not in ("none", "all", "lora_only"):
            raise ConfigError(f"--lora_bias {lora.lora_bias!r}: choose none, all or lora_only")
        if not d.data_path:
            raise ConfigError(
                "no training data: pass --data_path FILE (JSON/JSONL/parquet in ShareGPT, OpenAI or Alpaca form)"
            )
        if d.masking not in ("train_on_assistant", "train_on_last", "train_on_all"):
            raise ConfigError(
                f"--masking {d.masking!r}: choose train_on_assistant, train_on_last or train_on_all"
            )
        if d.packing not in PACKING:
            raise ConfigError(f"--packing {d.packing!r}: choose one of {', '.join(PACKING)}")
        if d.special_tokens_in_content not in ("warn", "error", "split"):
            raise ConfigError(
                f"--special_tokens_in_content {d.special_tokens_in_content!r}: choose warn, error or split"
            )
        if not 0.0 <= d.eval_ratio < 1.0:
            raise ConfigError(f"--eval_ratio {d.eval_ratio}: must be in [0, 1)")
        if d.model_max_length < 8:
            raise ConfigError(f"--model_max_length {d.model_max_length}: too short to hold a conversation")
        try:
            get_template(d.conv_template) if d.conv_template != "tokenizer" else None
        except ValueError as exc:
            raise ConfigError(f"--conv_template: {exc}") from None
        if m.rope_scaling_type is not None and m.rope_scaling_type not in ROPE_TYPES:
            raise ConfigError(
                f"--rope_scaling_type {m.rope_scaling_type!r}: choose one of {', '.join(ROPE_TYPES)}"
            )
        if m.rope_scaling_factor is not None and m.rope_scaling_factor < 1:
            raise ConfigError(
                f"--rope_scaling_factor {m.rope_scaling_factor}: must be >= 1 (it stretches the context; "
                "1 means no scaling)"
            )
        if (
            m.rope_scaling_factor is None
            and max_position_embeddings
            and d.model_max_length > max_position_embeddings
        ):
            m.rope_scaling_factor = float(math.ceil(d.model_max_length / max_position_embeddings))
            m.rope_scaling_type = m.rope_scaling_type or "linear"
        if m.rope_scaling_factor is not None and m.rope_scaling_type is None:
            m.rope_scaling_type = "linear"
        eval_on = str(t.eval_strategy.value if hasattr(t.eval_strategy, "value") else t.eval_strategy) != "no"
        if eval_on and not d.eval_data_path and d.eval_ratio == 0:
            raise ConfigError(
                f"--eval_strategy {t.eval_strategy.value} without eval data: pass --eval_data_path FILE "
                "or --eval_ratio 0.01 (or --eval_strategy no)"
            )
        if t.global_batch_size is not None:
            per_step = t.per_device_train_batch_size * world_size
            if t.global_batch_size % per_step:
                raise ConfigError(
                    f"--global_batch_size {t.global_batch_size} is not a multiple of per_device_train_batch_size "
                    f"x processes = {per_step}; pick e.g. {per_step * max(1, round(t.global_batch_size / per_step))}"
                )
            t.gradient_accumulation_steps = t.global_batch_size // per_step
        if t.loss_impl not in LOSS_IMPLS:
            raise ConfigError(f"--loss_impl {t.loss_impl!r}: choose one of {', '.join(LOSS_IMPLS)}")
        if t.loss_impl == "liger":
            if problem := liger_problem():
                raise ConfigError(
                    f"--loss_impl liger: {problem}. Use --loss_impl chunked (exact, any device)."
                )
        if m.flash_attn:
            m.attn_implementation = "flash_attention_2"
        return self


def liger_problem() -> str | None:
    """Why `--loss_impl liger` cannot run here, or None."""
    import importlib.util

    import torch

    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel; it needs triton and a CUDA GPU)"
    if not torch.cuda.is_available():
        return "liger-kernel's fused linear cross-entropy runs on a CUDA GPU; none is visible here"
    return None


# Flags transformers has since removed, as FastChat's scripts still pass them: name -> how to apply.
REMOVED_FLAGS = ("warmup_ratio", "fsdp_transformer_layer_cls_to_wrap")


def _pop_removed(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    out, removed, i = [], {}, 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name[2:] in REMOVED_FLAGS:
            if not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            removed[name[2:]] = value
        else:
            out.append(argv[i])
        i += 1
    return out, removed


def _apply_hardware_fallbacks(values: dict[str, Any], notes: list[str]) -> None:
    """GPU-only precision flags on a machine without CUDA: run in fp32 and say so.

    This lets a GPU recipe (e.g. FastChat's `--bf16 True --tf32 True`) be smoke-tested on a laptop
    unchanged; on a GPU nothing here applies.
    """
    import torch

    if torch.cuda.is_available():
        return
    for flag in ("bf16", "fp16", "tf32"):
        if values.get(flag):
            values[flag] = False if flag != "tf32" else None
            notes.append(f"--{flag} needs a CUDA GPU; none here, so this run trains in float32")
    values["use_cpu"] = True


def parse_run_config(argv: list[str], config_file: str | None = None) -> RunConfig:
    """YAML values become defaults; flags override them. Raises ConfigError on unknown keys."""
    parser = HfArgumentParser(PARSED)
    if config_file:
        parser.set_defaults(**load_yaml(config_file))
    argv, removed = _pop_removed(normalize_argv(argv))
    valid = all_flag_names()
    for flag in [a.split("=")[0] for a in argv if a.startswith("--")]:
        name = flag[2:]
        if name not in valid and not (name.startswith("no_") and name[3:] in valid):
            raise unknown_key_error(flag, ["--" + n for n in valid], "command line")
    try:
        namespace = vars(parser.parse_args(argv))
    except SystemExit as exc:
        raise ConfigError(
            f"could not parse the command line (exit {exc.code}); see `llama-sft train --help`"
        ) from None
    notes: list[str] = []
    if "warmup_ratio" in removed:
        namespace["warmup_steps"] = float(removed["warmup_ratio"])  # transformers 5: a float < 1 is a ratio
    if "fsdp_transformer_layer_cls_to_wrap" in removed:
        config = namespace.get("fsdp_config") or {}
        if isinstance(config, str):
            import json

            config = json.loads(Path(config).read_text())
        config["transformer_layer_cls_to_wrap"] = [removed["fsdp_transformer_layer_cls_to_wrap"]]
        namespace["fsdp_config"] = config
    _apply_hardware_fallbacks(namespace, notes)
    objects = []
    try:
        for cls in PARSED:
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            objects.append(cls(**{k: v for k, v in namespace.items() if k in names}))
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    run = RunConfig(*objects)
    run.notes = notes
    return run


def build_parser() -> HfArgumentParser:
    return HfArgumentParser(PARSED)
