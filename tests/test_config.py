"""Run configuration: YAML (sections or flat keys) + FastChat-style flags, and every validate() rule."""

from __future__ import annotations

import dataclasses

import pytest

from llama_sft.config import ConfigError, DataConfig, LoraConfig, ModelConfig, parse_run_config

DATA = ["--data_path", "train.json"]

YAML = """\
model:
  model_name_or_path: /models/llama-2-7b
data:
  data_path: [train.json]
  conv_template: llama-2
  model_max_length: 1024
lora:
  lora_r: 16
  lora_target_modules: q_proj,v_proj
training:
  learning_rate: 2.0e-4
  per_device_train_batch_size: 2
distributed:
  ddp_find_unused_parameters: false
"""
FLAT_YAML = """\
model_name_or_path: /models/llama-2-7b
data_path: train.json
lora_r: 16
learning_rate: 2.0e-4
"""


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def parse(*argv: str, config_file: str | None = None):
    return parse_run_config(list(argv), config_file)


def test_every_field_has_help():
    for cls in (ModelConfig, DataConfig, LoraConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_yaml_sections(tmp_path):
    run = parse(config_file=write(tmp_path, YAML)).validate()
    assert run.model.model_name_or_path == "/models/llama-2-7b"
    assert run.data.data_path == [str(tmp_path / "train.json")] and run.data.conv_template == "llama-2"
    assert run.data.model_max_length == 1024
    assert run.lora.lora_r == 16 and run.lora.lora_target_modules == ["q_proj", "v_proj"]
    assert run.training.learning_rate == 2e-4 and run.training.per_device_train_batch_size == 2
    assert run.training.ddp_find_unused_parameters is False


def test_yaml_flat_keys_and_scalars_for_lists(tmp_path):
    run = parse(config_file=write(tmp_path, FLAT_YAML)).validate()
    assert run.data.data_path == [str(tmp_path / "train.json")]  # a list, relative to the config file
    assert (run.model.model_name_or_path, run.lora.lora_r, run.training.learning_rate) == (
        "/models/llama-2-7b",
        16,
        2e-4,
    )


def test_cli_overrides_yaml(tmp_path):
    run = parse("--lora_r", "64", "--data_path", "a.json", "b.json", "--learning_rate", "1e-5",
                config_file=write(tmp_path, YAML))  # fmt: skip
    assert run.lora.lora_r == 64
    assert run.data.data_path == ["a.json", "b.json"]
    assert run.training.learning_rate == 1e-5
    assert run.data.conv_template == "llama-2"  # untouched YAML values stay


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "training:\n  learning_rat: 1.0e-4\n",
            r"\[training\]: unknown key 'learning_rat'; did you mean 'learning_rate'\?",
        ),
        ("lora:\n  lora_alpah: 32\n", r"\[lora\]: unknown key 'lora_alpah'; did you mean 'lora_alpha'\?"),
        ("lora_alpah: 32\n", r"unknown key 'lora_alpah'; did you mean 'lora_alpha'\?"),
        ("trainng:\n  learning_rate: 1.0e-4\n", r"unknown key 'trainng'; did you mean 'training'\?"),
        (
            "distributed:\n  deepspeeed: ds.json\n",
            r"\[distributed\]: unknown key 'deepspeeed'; did you mean 'deepspeed'\?",
        ),
    ],
)
def test_yaml_unknown_key_names_the_closest(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        parse(config_file=path)
    assert str(info.value).startswith(path)


def test_yaml_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse(config_file=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse(config_file=write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    ("flag", "closest"),
    [
        ("--learning_rat", "--learning_rate"),
        ("--lora_alpah", "--lora_alpha"),
        ("--model_max_len", "--model_max_length"),
    ],
)
def test_cli_unknown_flag_names_the_closest(flag, closest):
    with pytest.raises(ConfigError, match=f"command line: unknown key '{flag}'; did you mean '{closest}'"):
        parse(*DATA, flag, "1")


def test_cli_unknown_flag_with_equals():
    with pytest.raises(ConfigError, match="unknown key '--lora_alpah'"):
        parse(*DATA, "--lora_alpah=3")


def test_fastchat_aliases():
    run = parse(
        *DATA, "--evaluation_strategy", "steps", "--eval_ratio", "0.1", "--gradient_checkpoint", "True"
    )
    assert str(run.training.eval_strategy.value) == "steps"
    assert run.training.gradient_checkpointing is True
    assert parse(*DATA, "--evaluation_strategy=no").training.eval_strategy.value == "no"


def test_fastchat_flags_parse():
    run = parse(*DATA, "--lazy_preprocess", "True", "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.05",
                "--model_max_length", "2048", "--per_device_train_batch_size", "1").validate()  # fmt: skip
    assert run.data.lazy_preprocess is True and run.lora.lora_dropout == 0.05


def test_q_lora_true_selects_qlora():
    run = parse(*DATA, "--q_lora", "True").validate()
    assert (run.lora.method, run.lora.q_lora) == ("qlora", True)
    assert parse(*DATA, "--method", "qlora").validate().lora.method == "qlora"
    assert parse(*DATA).validate().lora.method == "lora"


# --- validate(): each rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--q_lora", "True", "--method", "full"], "use --method qlora"),
        (["--method", "adapters"], "--method 'adapters': choose one of full, lora, qlora"),
        (["--lora_bias", "some"], "--lora_bias 'some': choose none, all or lora_only"),
        (["--masking", "train_on_user"], "--masking 'train_on_user': choose train_on_assistant"),
        (["--packing", "greedy"], "--packing 'greedy': choose one of none, padded, packed"),
        (["--eval_ratio", "1.0"], r"--eval_ratio 1.0: must be in \[0, 1\)"),
        (["--eval_ratio", "-0.1"], r"must be in \[0, 1\)"),
        (["--model_max_length", "4"], "too short"),
        (["--conv_template", "vicuna"], "--conv_template: unknown template 'vicuna'. Did you mean 'vicuna_v1.1'"),
        (["--conv_template", "missing.yaml"], "--conv_template: template file not found"),
        (["--rope_scaling_type", "ntk"], "--rope_scaling_type 'ntk': choose one of linear, dynamic, yarn, llama3"),
        (["--rope_scaling_factor", "0.5"], "must be >= 1"),
        (["--eval_strategy", "steps"], "without eval data: pass --eval_data_path FILE or --eval_ratio"),
        (["--global_batch_size", "30", "--per_device_train_batch_size", "4"],
         "--global_batch_size 30 is not a multiple of per_device_train_batch_size x processes = 4; pick e.g. 32"),
    ],
)  # fmt: skip
def test_validate_rejects(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(*DATA, *argv).validate()


def test_validate_needs_data():
    with pytest.raises(ConfigError, match="no training data: pass --data_path FILE"):
        parse().validate()


def test_target_modules_split_on_commas():
    run = parse(*DATA, "--lora_target_modules", "q_proj,k_proj", "v_proj").validate()
    assert run.lora.lora_target_modules == ["q_proj", "k_proj", "v_proj"]


def test_rope_scaling_is_derived_from_lengths():
    run = parse(*DATA, "--model_max_length", "8192").validate(max_position_embeddings=4096)
    assert (run.model.rope_scaling_factor, run.model.rope_scaling_type) == (2.0, "linear")
    run = parse(*DATA, "--model_max_length", "5000").validate(max_position_embeddings=4096)
    assert run.model.rope_scaling_factor == 2.0  # rounded up
    run = parse(*DATA, "--model_max_length", "4096").validate(max_position_embeddings=4096)
    assert run.model.rope_scaling_factor is None and run.model.rope_scaling_type is None
    run = parse(*DATA, "--model_max_length", "8192", "--rope_scaling_type", "dynamic").validate(
        max_position_embeddings=2048
    )
    assert (run.model.rope_scaling_factor, run.model.rope_scaling_type) == (4.0, "dynamic")
    run = parse(*DATA, "--rope_scaling_factor", "2").validate()
    assert run.model.rope_scaling_type == "linear"


def test_global_batch_size_sets_accumulation():
    run = parse(*DATA, "--global_batch_size", "64", "--per_device_train_batch_size", "4").validate(
        world_size=2
    )
    assert run.training.gradient_accumulation_steps == 8


def test_eval_with_eval_data_or_ratio():
    assert parse(*DATA, "--eval_strategy", "steps", "--eval_ratio", "0.05").validate()
    assert parse(*DATA, "--eval_strategy", "epoch", "--eval_data_path", "eval.json").validate()


def test_flash_attn_sets_the_implementation():
    assert parse(*DATA, "--flash_attn", "True").validate().model.attn_implementation == "flash_attention_2"
    assert parse(*DATA).validate().model.attn_implementation is None


def test_template_files_and_tokenizer_template_are_accepted(tmp_path):
    path = write(
        tmp_path,
        'name: qa\nuser_format: "Q: {content}\\n"\nassistant_format: "A: {content}{eos}\\n"\n',
        "qa.yaml",
    )
    assert parse(*DATA, "--conv_template", path).validate().data.conv_template == path
    assert parse(*DATA, "--conv_template", "tokenizer").validate().data.conv_template == "tokenizer"


def test_to_dict_round_trips_through_yaml(tmp_path):
    import yaml

    run = parse(config_file=write(tmp_path, YAML)).validate()
    out = run.to_dict()
    assert set(out) == {"model", "data", "lora", "training"}
    assert out["lora"]["lora_target_modules"] == ["q_proj", "v_proj"]
    assert yaml.safe_load(yaml.safe_dump(out["data"])) == out["data"]
