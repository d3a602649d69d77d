"""`llama-sft export` through the real CLI: safetensors is `merge` (one code path, `merge` still
works), a LoRA run trained with linear RoPE scaling exports with that scaling, llama.cpp computes
the merged model's logits from it, and a llama.cpp-only outtype says what it needs."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA adapter on a tiny base with 512 positions, trained at 1024 (linear RoPE x2)."""
    from llama_sft.cli.main import main
    from llama_sft.tiny import build_tokenizer, save_tiny_model

    root = tmp_path_factory.mktemp("lora-rope")
    save_tiny_model(root / "base", build_tokenizer(), hidden_size=64, layers=2, max_position_embeddings=512)
    records = [
        {
            "conversations": [
                {"from": "human", "value": f"Convert {k} km to m."},
                {"from": "gpt", "value": f"{k}000 m."},
            ]
        }
        for k in range(1, 17)
    ]
    (root / "train.json").write_text(json.dumps(records))
    argv = ["train", "--model_name_or_path", str(root / "base"), "--data_path", str(root / "train.json")]
    argv += ["--output_dir", str(root / "run"), "--method", "lora", "--conv_template", "vicuna_v1.1"]
    argv += ["--model_max_length", "1024", "--max_steps", "2", "--per_device_train_batch_size", "8"]
    argv += [
        "--learning_rate",
        "2e-2",
        "--lora_dropout",
        "0.0",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
    ]
    argv += ["--data_cache_dir", str(root / "cache"), "--seed", "0"]
    torch.set_num_threads(1)
    assert main(argv) == 0
    return root / "run"


def test_safetensors_export_is_merge(lora_run, tmp_path):
    from safetensors.torch import load_file

    from llama_sft.cli.main import main

    assert main(["export", str(lora_run), "--format", "safetensors", "-o", str(tmp_path / "export")]) == 0
    assert main(["merge", str(lora_run), "--out", str(tmp_path / "merge")]) == 0  # the alias keeps working
    names = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "merge").iterdir())
    a, b = (
        load_file(tmp_path / "export" / "model.safetensors"),
        load_file(tmp_path / "merge" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert main(["export", str(lora_run), "--format", "safetensors"]) == 2  # needs -o DIR, says so


def test_gguf_export_carries_rope_scaling_and_llama_cpp_runs_it(lora_run, tmp_path, capsys):
    from gguf import GGUFReader

    from llama_sft.cli.main import main
    from llama_sft.export.merge import load_merged

    out = tmp_path / "tiny.gguf"
    assert main(["export", str(lora_run), "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rope"] == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}
    assert (tmp_path / "Modelfile").read_text().startswith("# Ollama")
    reader = GGUFReader(str(out))

    def field(name):
        f = reader.fields[name]
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0].name == "STRING" else value[0]

    assert field("llama.rope.scaling.type") == "linear" and field("llama.rope.scaling.factor") == 2.0
    assert field("llama.context_length") == 1024 and field("tokenizer.ggml.add_bos_token")
    assert main(["export", str(lora_run), "-o", str(out)]) == 2  # exists, no --overwrite

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
    from llama_cpp_build import LlamaCppUnavailable, ensure_llama_cpp

    try:
        llama_cpp = ensure_llama_cpp()
    except LlamaCppUnavailable as exc:
        from ci import unavailable

        unavailable(f"llama.cpp half: {exc}")
    import numpy as np

    model, tokenizer, template, _ = load_merged(lora_run, dtype="float32")
    text = "<s>A chat between a curious user. " * 70 + "USER: Convert 7 km to m. ASSISTANT:"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 512  # past the base's positions: only right with the scaling
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy()
    llm = llama_cpp.Llama(str(out), n_ctx=1024, n_threads=1, verbose=False, logits_all=True)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    got = np.array(llm.scores[llm.n_tokens - 1])  # eval_logits is empty without logits_all
    assert np.abs(got - ref).max() <= 0.02 * (ref.max() - ref.min()), np.abs(got - ref).max()


def test_llama_cpp_outtype_without_llama_cpp_python_says_what_to_do(lora_run, tmp_path, monkeypatch):
    import importlib.util

    from llama_sft.config import ConfigError
    from llama_sft.export.gguf import export_gguf

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ConfigError, match="needs llama-cpp-python"):
        export_gguf(lora_run, tmp_path / "x.gguf", "q4_k_m")
