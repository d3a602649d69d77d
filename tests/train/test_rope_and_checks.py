"""RoPE scaling is saved with the run and loaded back; bad configs fail before any weights load."""

from __future__ import annotations

import json

import pytest

from llama_sft.cli.main import main
from llama_sft.config import ConfigError, parse_run_config
from llama_sft.tiny import save_tiny_model


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory, tiny_tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("short-ctx"), tiny_tokenizer, max_position_embeddings=64)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_beyond_max_positions_saves_and_reloads_scaling(
    tmp_path, short_context_model, sharegpt_file, method
):
    from llama_sft.model.trained import load_trained

    out = tmp_path / method
    assert (
        main(
            [
                "train",
                "--model_name_or_path",
                str(short_context_model),
                "--data_path",
                str(sharegpt_file),
                "--output_dir",
                str(out),
                "--method",
                method,
                "--model_max_length",
                "128",
                "--max_steps",
                "2",
                "--save_strategy",
                "no",
                "--report_to",
                "none",
            ]
        )
        == 0
    )
    record = json.loads((out / "run_record.json").read_text())
    # default factor = ceil(model_max_length / max_position_embeddings) = ceil(128 / 64)
    assert record["rope_parameters"]["rope_type"] == "linear" and record["rope_parameters"]["factor"] == 2.0
    model, _, _ = load_trained(out)
    config = model.config if method == "full" else model.base_model.model.config
    assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 2.0
    assert config.max_position_embeddings == 128


def test_dynamic_rope_warns(caplog):
    from transformers import LlamaConfig

    from llama_sft.model.rope import apply_rope_scaling

    config = LlamaConfig(max_position_embeddings=64)
    with caplog.at_level("WARNING"):
        params = apply_rope_scaling(config, "dynamic", 2.0, 128)
    assert params["rope_type"] == "dynamic" and "dynamic NTK" in caplog.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--q_lora", "True", "--method", "full"], "QLoRA trains adapters"),
        (["--rope_scaling_factor", "0.5"], "must be >= 1"),
        (["--eval_strategy", "steps"], "without eval data"),
        (["--global_batch_size", "10", "--per_device_train_batch_size", "4"], "not a multiple"),
        (["--conv_template", "vicunna"], "did you mean 'vicuna_v1.1'"),
        (["--flash_attn", "True"], "flash"),
    ],
)
def test_bad_config_fails_before_loading_weights(
    monkeypatch, tiny_model_dir, sharegpt_file, flags, message, capsys
):
    import llama_sft.train.run as run_module

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the config was checked")

    monkeypatch.setattr(run_module, "load_for_this_rank", no_weights)
    # The CUDA-only refusals (flash-attn) are checked as on a machine without CUDA, also on a GPU box.
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = main(
        ["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(sharegpt_file), *flags]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert message.lower() in err.lower()
    assert "Traceback" not in err


def test_unknown_flag_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean '--lora_alpha'"):
        parse_run_config(["--lora_alpah", "16"])


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_sample_ids(tmp_path, tiny_model_dir, sharegpt_file, capsys):
    from llama_sft.train.trainer import NonFiniteLossError

    with pytest.raises(NonFiniteLossError, match=r"at step \d+; the batch held samples \[.conv_"):
        main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(sharegpt_file),
              "--output_dir", str(tmp_path / "nan"), "--method", "full", "--learning_rate", "1e30", "--max_steps", "3",
              "--max_grad_norm", "0", "--save_strategy", "no", "--report_to", "none", "--torch_dtype", "float32",
              "--adam_epsilon", "0"])  # fmt: skip


def test_missing_model_is_a_clean_error(tmp_path, sharegpt_file, capsys):
    code = main(
        ["train", "--model_name_or_path", str(tmp_path / "no-such-model"), "--data_path", str(sharegpt_file)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--model_name_or_path" in err and "Traceback" not in err


def test_bad_data_error_is_printed_once_with_file_and_reason(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n{bad json\n')
    code = main(["train", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(bad),
                 "--output_dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2 record 1: malformed_json" in err and "no_assistant_turn" in err
    assert "error: error:" not in err
