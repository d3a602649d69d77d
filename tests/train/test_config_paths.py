"""`llama-sft train CONFIG.yaml` runs the same from any directory: paths in a config resolve relative
to the config file; a DeepSpeed config without a launcher runs as a world of one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_sft.cli.main import main
from llama_sft.config import load_yaml, parse_run_config

REPO = Path(__file__).resolve().parents[2]
RUN_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_paths_in_a_config_are_relative_to_it(tmp_path, monkeypatch):
    folder = tmp_path / "exp"
    (folder / "model").mkdir(parents=True)
    config = folder / "run.yaml"
    config.write_text(
        "model: {model_name_or_path: model}\n"
        "data: {data_path: [a.json, /abs/b.json], eval_data_path: e.json, conv_template: t.yaml}\n"
        "training: {output_dir: runs/x}\n"
        "distributed: {deepspeed: ds.json}\n"
    )
    monkeypatch.chdir(tmp_path)
    flat = load_yaml(config)
    assert flat["data_path"] == [str(folder / "a.json"), "/abs/b.json"]
    assert flat["eval_data_path"] == [str(folder / "e.json")]
    assert flat["conv_template"] == str(folder / "t.yaml") and flat["deepspeed"] == str(folder / "ds.json")
    assert flat["model_name_or_path"] == str(folder / "model")
    assert flat["output_dir"] == "runs/x"  # outputs stay where the run starts, like flags


def test_names_that_are_not_files_stay(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: {model_name_or_path: meta-llama/Llama-2-7b-hf}\ndata: {conv_template: llama-2}\n"
    )
    flat = load_yaml(config)
    assert flat["model_name_or_path"] == "meta-llama/Llama-2-7b-hf" and flat["conv_template"] == "llama-2"


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_parse_from_any_directory(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = parse_run_config(["--data_path", "data.json"], config_file=str(path))
    if run.training.deepspeed:
        assert Path(run.training.deepspeed).is_file()


@pytest.mark.slow
def test_deepspeed_config_without_launcher_runs_as_one_process(
    tmp_path, monkeypatch, tiny_model_dir, sharegpt_file, caplog
):
    monkeypatch.chdir(tmp_path)  # not the repository: the config's deepspeed path must still resolve
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    code = main(["train", str(REPO / "configs" / "llama2-7b-qlora.yaml"), "--data_path", str(sharegpt_file),
                 "--model_name_or_path", str(tiny_model_dir), "--method", "lora", "--max_steps", "1",
                 "--model_max_length", "64", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                 "1", "--output_dir", "run", "--save_strategy", "no"])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["distributed"]["mode"] == "deepspeed" and record["distributed"]["world_size"] == 1
