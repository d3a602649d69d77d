"""Distributed training: the shipped accelerate/DeepSpeed configs, the rules refused before loading,
and real 2-process CPU runs (gloo) for DDP, FSDP, ZeRO-2 and ZeRO-3 whose loss falls and whose
saved output loads.

Each run's record says how the model was really sharded (`ShardingCheck`): accelerate silently
turns FSDP into DDP on CPU, so the FSDP test asserts FSDP-wrapped decoder layers and half-size
local shards rather than trusting the flag.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from ci import in_ci

from llama_sft.config import ConfigError, parse_run_config
from llama_sft.train.distributed import check_distributed

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED = sorted((REPO / "configs" / "deepspeed").glob("*.json"))
ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def has_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


# deepspeed is a dev dependency: without it these tests skip on a laptop and fail under CI=true.
needs_deepspeed = pytest.mark.skipif(
    not has_deepspeed() and not in_ci(), reason="needs deepspeed: pip install 'llama-sft[deepspeed]'"
)


# ---- shipped configs ----


def test_expected_configs_are_shipped():
    assert {p.stem for p in DEEPSPEED} == {"zero2", "zero3", "zero3_offload"}
    assert {p.stem for p in ACCELERATE} == {"ddp", "fsdp", "zero2", "zero3", "zero3_offload"}


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.stem)
def test_deepspeed_json_uses_auto_values_and_both_precisions(path):
    config = json.loads(path.read_text())
    # Both blocks, so --bf16 True and --fp16 True each reach DeepSpeed (FastChat's ZeRO-2 JSON had only fp16).
    assert config["fp16"]["enabled"] == "auto" and config["bf16"]["enabled"] == "auto"
    for key in (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
    ):
        assert config[key] == "auto", key
    zero = config["zero_optimization"]
    assert zero["stage"] in (2, 3)
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # else the saved weights are empty
    assert "scheduler" not in config  # --lr_scheduler_type / --warmup_* keep their meaning
    if "offload_optimizer" in zero:
        # ZeRO-Offload needs DeepSpeed's CPU Adam; an "auto" block takes lr/betas/eps/decay from the flags.
        assert all(v == "auto" for v in config["optimizer"]["params"].values())
    else:
        # No optimizer block, so --optim and --learning_rate apply as they are.
        assert "optimizer" not in config and config["zero_allow_untested_optimizer"] is True


@needs_deepspeed
@pytest.mark.parametrize("flag", ["bf16", "fp16"])
def test_precision_flags_reach_deepspeed(flag):
    from transformers import TrainingArguments

    for path in DEEPSPEED:
        args = TrainingArguments(output_dir="unused", deepspeed=str(path), use_cpu=True, **{flag: True})
        config = args.hf_deepspeed_config.config
        assert config[flag]["enabled"] is True, path.name
        other = "fp16" if flag == "bf16" else "bf16"
        assert config[other]["enabled"] is False, path.name


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_yaml_is_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(path))  # rejects unknown top-level keys
    raw = yaml.safe_load(path.read_text())
    flags = {action.dest for action in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        unknown = set(raw.get(section) or {}) - flags
        assert not unknown, f"{path.name} [{section}]: accelerate launch has no {sorted(unknown)}"
    if path.stem == "ddp":
        assert config.distributed_type.value == "MULTI_GPU"
    elif path.stem == "fsdp":
        assert config.distributed_type.value == "FSDP"
    else:
        assert config.distributed_type.value == "DEEPSPEED"
        ds_file = REPO / config.deepspeed_config["deepspeed_config_file"]
        assert ds_file.exists() and ds_file.stem == path.stem
        assert config.deepspeed_config["zero3_init_flag"] is ("zero3" in path.stem)


def test_fsdp_yaml_is_full_shard_of_llama_decoder_layers():
    import transformers.models.llama.modeling_llama as llama

    fsdp = yaml.safe_load((REPO / "configs/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True  # full shard
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert hasattr(llama, fsdp["fsdp_transformer_layer_cls_to_wrap"])
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# ---- rules checked before any model loads ----


def run_config(*flags: str):
    return parse_run_config(
        ["--model_name_or_path", "unused", "--data_path", "unused.json", "--output_dir", "unused", *flags]
    )


@pytest.fixture
def launched(monkeypatch):
    """`check(*flags)`: parse flags, then check them as a process started by torchrun would."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)

    def check(*flags: str):
        monkeypatch.delenv("LOCAL_RANK", raising=False)  # parsing with it set would start a process group
        run = run_config(*flags)
        monkeypatch.setenv("LOCAL_RANK", "0")
        check_distributed(run)

    return check


def deepspeed_file(tmp_path, base: str, **zero) -> str:
    config = json.loads((REPO / "configs/deepspeed" / f"{base}.json").read_text())
    config["zero_optimization"].update(zero)
    path = tmp_path / f"{base}-edited.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_fsdp_without_a_launcher_is_refused(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        check_distributed(run_config("--fsdp", "full_shard"))


def test_fsdp_sharded_state_dict_is_refused(launched):
    with pytest.raises(ConfigError, match="FULL_STATE_DICT"):
        launched("--fsdp", "full_shard", "--fsdp_config", '{"state_dict_type": "SHARDED_STATE_DICT"}')


def test_fsdp_full_shard_passes(launched):
    launched(
        "--fsdp", "full_shard", "--fsdp_config", '{"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}'
    )


def test_qlora_with_fsdp_passes_in_float32_and_bfloat16(launched, caplog):
    # The 4-bit weights are stored in the run's dtype under FSDP (model.quantize), float32 included.
    launched("--fsdp", "full_shard", "--method", "qlora")
    launched("--fsdp", "full_shard", "--method", "qlora", "--torch_dtype", "bfloat16")
    assert not [r for r in caplog.records if r.name == "llama_sft"]


@needs_deepspeed
def test_deepspeed_and_fsdp_together_are_refused(launched):
    with pytest.raises(ConfigError, match="pick one"):
        launched("--deepspeed", str(REPO / "configs/deepspeed/zero3.json"), "--fsdp", "full_shard")


@needs_deepspeed
def test_zero3_that_would_save_empty_weights_is_refused(launched, tmp_path):
    path = deepspeed_file(tmp_path, "zero3", stage3_gather_16bit_weights_on_model_save=False)
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        launched("--deepspeed", path)


@needs_deepspeed
def test_qlora_with_zero3(launched, caplog):
    zero3, offload = (str(REPO / f"configs/deepspeed/{name}.json") for name in ("zero3", "zero3_offload"))
    launched("--deepspeed", zero3, "--q_lora", "True")  # float32: 4-bit weights stored in float32, sharded
    launched("--deepspeed", zero3, "--q_lora", "True", "--torch_dtype", "bfloat16")
    assert not [r for r in caplog.records if r.name == "llama_sft"]
    launched("--deepspeed", offload, "--q_lora", "True", "--torch_dtype", "bfloat16")
    assert "more GPU memory" in caplog.text  # works, but offload does not pay with QLoRA
    # ZeRO-2 does not shard weights, so 4-bit weights in uint8 are fine there.
    launched("--deepspeed", str(REPO / "configs/deepspeed/zero2.json"), "--q_lora", "True")


# ---- real 2-process runs on CPU ----

TRAIN = [
    "--max_steps",
    "6",
    "--per_device_train_batch_size",
    "4",
    "--learning_rate",
    "1e-2",
    "--logging_steps",
    "1",
    "--model_max_length",
    "64",
    "--save_strategy",
    "no",
    "--report_to",
    "none",
    "--seed",
    "0",
    "--ddp_backend",
    "gloo",
]


def train_args(model_dir, data, out, *extra) -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--data_path",
        str(data),
        "--output_dir",
        str(out),
        *TRAIN,
        *extra,
    ]


def losses(out: Path) -> list[float]:
    return [
        m["loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in m
    ]


def sharding(out: Path) -> dict:
    return json.loads((out / "run_record.json").read_text())["distributed"]


def assert_learned(out: Path, drop: float = 0.2):
    trace = losses(out)
    assert len(trace) == 6 and trace[-1] < trace[0] - drop, trace


@pytest.mark.slow
def test_ddp_lora(launch, tmp_path, tiny_model_dir, sharegpt_file, check_trained_output):
    out = tmp_path / "run"
    launch.torchrun(train_args(tiny_model_dir, sharegpt_file, out, "--method", "lora"))
    assert_learned(out)
    info = sharding(out)
    assert info["mode"] == "ddp" and info["world_size"] == 2 and info["backend"] == "gloo"
    assert info["params_local"] == info["params_full"]  # every process holds the whole model
    changed = check_trained_output(out, tiny_model_dir)
    assert all(name.endswith("proj.weight") for name in changed), changed  # LoRA moved only adapted layers


@pytest.mark.slow
def test_fsdp_full_shard_through_the_shipped_accelerate_yaml(
    launch, tmp_path, tiny_model_dir, sharegpt_file, check_trained_output
):
    out = tmp_path / "run"
    launch.accelerate(
        "configs/accelerate/fsdp.yaml", train_args(tiny_model_dir, sharegpt_file, out, "--method", "lora")
    )
    assert_learned(out)
    info = sharding(out)
    assert info["mode"] == "fsdp2" and info["requested"] == "fsdp" and info["world_size"] == 2
    # One FSDP unit per decoder layer, as the YAML's wrap policy says.
    assert "FSDPLlamaDecoderLayer" in info["fsdp2_modules"]
    assert info["fsdp2_module_count"] >= 3 and info["dtensor_params"] > 0
    assert info["params_local"] * 2 <= info["params_full"] + 64  # each process holds half (plus padding)
    check_trained_output(out, tiny_model_dir)


@pytest.mark.slow
def test_fsdp_full_finetune_with_torchrun_flags(
    launch, tmp_path, tiny_model_dir, sharegpt_file, check_trained_output
):
    out = tmp_path / "run"
    fsdp = [
        "--fsdp",
        "full_shard",
        "--fsdp_config",
        '{"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}',
    ]
    launch.torchrun(
        train_args(tiny_model_dir, sharegpt_file, out, "--method", "full", "--learning_rate", "1e-3", *fsdp)
    )
    assert_learned(out)
    assert sharding(out)["mode"] == "fsdp2" and (out / "model.safetensors").exists()
    changed = check_trained_output(out, tiny_model_dir)
    assert any("layers.0." in name for name in changed) and any("embed_tokens" in name for name in changed)


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_zero2_lora(launch, tmp_path, tiny_model_dir, sharegpt_file, check_trained_output):
    out = tmp_path / "run"
    launch.torchrun(
        train_args(
            tiny_model_dir,
            sharegpt_file,
            out,
            "--method",
            "lora",
            "--deepspeed",
            "configs/deepspeed/zero2.json",
        )
    )
    assert_learned(out)
    info = sharding(out)
    assert info["requested"] == "zero2" and info["optimizer"] == "DeepSpeedZeroOptimizer"
    assert info["zero3_params"] == 0  # ZeRO-2 keeps whole weights on every process
    check_trained_output(out, tiny_model_dir)


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_zero3_lora_saves_a_loadable_adapter(
    launch, tmp_path, tiny_model_dir, sharegpt_file, check_trained_output
):
    out = tmp_path / "run"
    launch.torchrun(
        train_args(
            tiny_model_dir,
            sharegpt_file,
            out,
            "--method",
            "lora",
            "--deepspeed",
            "configs/deepspeed/zero3.json",
        )
    )
    assert_learned(out)
    info = sharding(out)
    assert info["requested"] == "zero3" and info["optimizer"] == "DeepSpeedZeroOptimizer_Stage3"
    assert info["zero3_params"] > 0 and info["params_local"] * 2 <= info["params_full"] + 64
    check_trained_output(out, tiny_model_dir)  # FastChat once saved empty adapters here


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_zero3_full_finetune_through_the_shipped_accelerate_yaml(
    launch, tmp_path, tiny_model_dir, sharegpt_file, check_trained_output
):
    out = tmp_path / "run"
    launch.accelerate(
        "configs/accelerate/zero3.yaml",
        train_args(tiny_model_dir, sharegpt_file, out, "--method", "full", "--learning_rate", "1e-3"),
    )
    assert_learned(out)
    assert sharding(out)["requested"] == "zero3" and (out / "model.safetensors").exists()
    changed = check_trained_output(out, tiny_model_dir)
    assert len(changed) > 10
