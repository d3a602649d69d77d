"""Model shapes for the planner: the five LLaMA presets as offline config dicts, and the same shape
read from a `config.json`, a model directory or (config file only) a hub id.

Nothing here imports torch or transformers, so `llama-sft plan` answers in well under a second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# The published configs of each model, reduced to what memory depends on.
PRESETS: dict[str, dict] = {
    "llama2-7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
    },
    "llama2-13b": {
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
    },
    "llama2-70b": {
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
    },
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
    "llama3-70b": {
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
}

# The projections `llama-sft train` adapts by default; a test keeps this equal to
# llama_sft.config.DEFAULT_TARGETS (imported there with transformers, too slow for `plan`).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ShapeError(ValueError):
    """The model spec could not be turned into a LLaMA shape; the message says what was tried."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers memory depends on, for a LLaMA-style decoder (SwiGLU MLP, RMSNorm, RoPE, GQA)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None

    @property
    def head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_dims().values())

    @property
    def layer_norm_params(self) -> int:
        return 2 * self.hidden_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def linear_params(self) -> int:
        """Parameters in the decoder projections (what QLoRA quantizes)."""
        return self.num_hidden_layers * self.layer_linear_params

    @property
    def other_params(self) -> int:
        """Embeddings, LM head and norms (kept in 16 or 32 bit under QLoRA)."""
        return (
            self.embedding_params
            + self.lm_head_params
            + self.num_hidden_layers * self.layer_norm_params
            + self.hidden_size
        )

    @property
    def total_params(self) -> int:
        return self.linear_params + self.other_params

    def lora_params(self, r: int, targets=DEFAULT_TARGETS) -> int:
        """LoRA A (r x in) and B (out x r) for each targeted projection of every layer."""
        dims = self.linear_dims()
        unknown = sorted(set(targets) - set(dims))
        if unknown:
            raise ShapeError(f"unknown LoRA target module(s) {unknown}; LLaMA has {sorted(dims)}")
        return self.num_hidden_layers * sum(r * (dims[t][0] + dims[t][1]) for t in targets)

    def with_layers(self, layers: int) -> ModelShape:
        from dataclasses import replace

        return replace(self, name=f"{self.name}-{layers}l", num_hidden_layers=layers)


def shape_from_config(config: dict, name: str) -> ModelShape:
    missing = [
        k
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
        )
        if k not in config
    ]
    if missing:
        raise ShapeError(f"{name}: config has no {', '.join(missing)}; is it a LLaMA-style decoder?")
    heads = int(config["num_attention_heads"])
    return ModelShape(
        name=name,
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]),
        num_hidden_layers=int(config["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        vocab_size=int(config["vocab_size"]),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=config.get("head_dim"),
    )


def load_shape(spec: str) -> ModelShape:
    """A preset name, a config.json, a model directory, or a hub id (its config.json only)."""
    if spec in PRESETS:
        return shape_from_config(PRESETS[spec], spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ShapeError(f"{spec}: directory has no config.json")
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ShapeError(f"{path}: not valid JSON ({exc})") from exc
        return shape_from_config(config.get("text_config", config), spec)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return shape_from_config(_hub_config(spec), spec)
    raise ShapeError(
        f"{spec!r} is not a preset ({', '.join(PRESETS)}), a config.json, a directory or a hub id"
    )


def _hub_config(repo_id: str) -> dict:
    """Only config.json is fetched (or read from the local HF cache when HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "config.json")
    except Exception as exc:  # offline and not cached, gated, or no such repo
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise ShapeError(
            f"{repo_id}: could not read its config.json{offline}: {exc.__class__.__name__}. "
            f"Pass a local config.json or a preset ({', '.join(PRESETS)})."
        ) from exc
    return json.loads(Path(path).read_text(encoding="utf-8"))
