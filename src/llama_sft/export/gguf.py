"""`llama-sft export --format gguf`: a run (merged first) as one GGUF file for llama.cpp and Ollama.

Written with llama.cpp's own gguf-py (`GGUFWriter`, its tensor-name map and quantizers), for the
`llama` architecture. Three things decide whether the file behaves like the trained model:
* the Q/K rows: transformers rotates the two halves of each head (rotate_half), llama.cpp rotates
  adjacent pairs, so the rows of q_proj and k_proj are interleaved head by head;
* the positions: RoPE base and the scaling the run trained with (linear, YaRN, llama3), context
  length, GQA head counts and the RMSNorm epsilon;
* the prompt: the tokenizer (`gguf_vocab`), BOS added once, the training template as
  `tokenizer.chat_template`, and an Ollama Modelfile beside the file (`modelfile`).
Verified by implementations we did not write: transformers' GGUF loader and llama.cpp itself
(tests/export).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..exceptions import ConfigError
from .gguf_vocab import build_vocab, write_vocab

log = logging.getLogger("llama_sft")
OUTTYPES = ("f16", "bf16", "q8_0", "f32")
# Through llama.cpp's quantizer (llama-cpp-python); the name is llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>.
LLAMA_CPP_OUTTYPES = (
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q2_k",
    "q3_k_s",
    "q3_k_m",
    "q3_k_l",
    "q4_k_s",
    "q4_k_m",
    "q5_k_s",
    "q5_k_m",
    "q6_k",
)


def permute_rotary(weight, n_heads: int):
    """HF's half-split rotary rows -> llama.cpp's interleaved pairs: row i of the first half of a
    head and row i of its second half become rows 2i and 2i+1."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def _rope(writer, config, n_embd_head: int) -> dict:
    """Write RoPE base and scaling; returns the notes. Dynamic NTK has no llama.cpp counterpart."""
    import gguf

    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    writer.add_rope_dimension_count(n_embd_head)
    kind = params.get("rope_type", "default")
    factor = params.get("factor")
    if kind == "default":
        pass
    elif kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factor))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(factor))
        original = params.get("original_max_position_embeddings") or int(
            config.max_position_embeddings / factor
        )
        writer.add_rope_scaling_orig_ctx_len(int(original))
    elif kind == "llama3":
        pass  # per-frequency factors go in the rope_freqs tensor (see _rope_freqs)
    else:
        raise ConfigError(
            f"RoPE scaling {kind!r}: llama.cpp has no such scaling, so the GGUF would compute other "
            "positions than training did. Export runs trained with linear, yarn or llama3 scaling."
        )
    return {"rope_type": kind, "rope_theta": theta, **({"factor": factor} if factor else {})}


def _rope_freqs(config):
    """llama3 scaling as llama.cpp takes it: the divisor of each rotary frequency, computed from
    transformers' own inverse frequencies with and without the scaling."""
    import numpy as np
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    if params.get("rope_type") != "llama3":
        return None
    scaled, attention = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = params.get("rope_theta", 10000.0)
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if abs(float(attention) - 1.0) > 1e-6:
        raise ConfigError(f"llama3 RoPE with attention factor {attention}: llama.cpp does not apply one")
    return (plain / scaled.float()).numpy().astype(np.float32)


def _tensor_type(outtype: str, data):
    """The GGML type for one tensor: 1-D (norms) stay f32, as llama.cpp's converter keeps them."""
    import gguf

    if data.ndim == 1 or outtype == "f32":
        return gguf.GGMLQuantizationType.F32
    kinds = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }
    qtype = kinds[outtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:  # a row q8_0 cannot cut into blocks of 32: keep it exact in f16
        return gguf.GGMLQuantizationType.F16
    return qtype


def write_gguf(
    model,
    tokenizer,
    template,
    path: str | Path,
    outtype: str = "f16",
    pre: str | None = None,
    name: str | None = None,
) -> dict:
    """Write `model` (a merged LlamaForCausalLM) with its training tokenizer and template to `path`."""
    import gguf
    import torch

    if outtype not in OUTTYPES:
        raise ConfigError(
            f"--outtype {outtype!r}: choose {', '.join(OUTTYPES)} (or a llama.cpp type: {', '.join(LLAMA_CPP_OUTTYPES)})"
        )
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"model type {config.model_type!r}: GGUF export writes the llama architecture only")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ConfigError("attention or MLP biases: not the llama architecture llama.cpp expects")
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    state = model.state_dict()
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    vocab = build_vocab(tokenizer, template, n_vocab, pre=pre)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name or path.stem)
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[outtype]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    if head_dim * n_head != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rope = _rope(writer, config, head_dim)
    write_vocab(writer, vocab)
    writer.add_chat_template(template.to_jinja())

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    counts: dict[str, int] = {}
    freqs = _rope_freqs(config)
    if freqs is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", freqs)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, tensor in state.items():
        if "rotary_emb" in key or (tied and key == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same tensor as token_embd
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(f"{key}: no llama.cpp tensor for this weight (not a plain llama model?)")
        weight = tensor.detach().to(torch.float32)
        if key.endswith("self_attn.q_proj.weight"):
            weight = permute_rotary(weight, n_head)
        elif key.endswith("self_attn.k_proj.weight"):
            weight = permute_rotary(weight, n_kv)
        data = weight.numpy()
        qtype = _tensor_type(outtype, data)
        packed = gguf.quants.quantize(data, qtype)
        writer.add_tensor(target, packed, raw_dtype=None if qtype.name in ("F16", "F32") else qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "gguf": str(path),
        "outtype": outtype,
        "bytes": path.stat().st_size,
        "tensor_types": counts,
        "rope": rope,
        "context_length": int(config.max_position_embeddings),
        "tokenizer": {
            "model": vocab.model,
            "pre": vocab.pre,
            "add_bos": vocab.add_bos,
            "special_ids": vocab.special_ids,
        },
    }


def quantize_with_llama_cpp(src: Path, dst: Path, outtype: str) -> None:
    """llama.cpp's own k-quants (q4_k_m, ...) through llama-cpp-python, from an f16 GGUF."""
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError(
            f"--outtype {outtype} uses llama.cpp's quantizer, which needs llama-cpp-python "
            "(`pip install llama-cpp-python`, or `make verify-gguf`, which builds and caches it). "
            f"Without it: --outtype {', '.join(OUTTYPES[:3])} (written by the gguf package), or run "
            f"llama.cpp's `llama-quantize FILE.gguf OUT.gguf {outtype.upper()}` yourself."
        ) from None
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}", None)
    if ftype is None:
        raise ConfigError(
            f"--outtype {outtype}: this llama-cpp-python has no LLAMA_FTYPE_MOSTLY_{outtype.upper()}"
        )
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {outtype} (return code {rc})")


def default_output(source: Path, outtype: str) -> Path:
    return source / "gguf" / f"{source.resolve().name}-{outtype}.gguf"


def export_gguf(
    source: str | Path,
    out: str | Path | None = None,
    outtype: str = "f16",
    qlora_base: str = "dequantized",
    pre: str | None = None,
    modelfile: bool = True,
    overwrite: bool = False,
    tolerance: float | None = None,
) -> dict:
    """Merge (adapter runs) through `merge.load_merged` (which checks the merge), write the GGUF and
    its Modelfile."""
    from .merge import load_merged
    from .modelfile import write_modelfile

    source = Path(source)
    outtype = outtype.lower()
    if outtype not in OUTTYPES and outtype not in LLAMA_CPP_OUTTYPES:
        raise ConfigError(f"--outtype {outtype!r}: choose {', '.join(OUTTYPES + LLAMA_CPP_OUTTYPES)}")
    path = Path(out) if out else default_output(source, outtype)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite or choose another -o")
    if outtype in LLAMA_CPP_OUTTYPES:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            quantize_with_llama_cpp(path, path, outtype)  # raises the explanation before any loading
    started = time.perf_counter()
    model, tokenizer, template, notes = load_merged(
        source, dtype="auto", qlora_base=qlora_base, tolerance=tolerance
    )
    loaded = time.perf_counter()
    if outtype in LLAMA_CPP_OUTTYPES:
        staging = path.with_name(path.name + ".f16.tmp")
        info = write_gguf(model, tokenizer, template, staging, "f16", pre=pre, name=path.stem)
        try:
            quantize_with_llama_cpp(staging, path, outtype)
        finally:
            staging.unlink(missing_ok=True)
        info.update(gguf=str(path), outtype=outtype, bytes=path.stat().st_size)
    else:
        info = write_gguf(model, tokenizer, template, path, outtype, pre=pre, name=path.stem)
    info["merge"] = notes.get("merge")
    info["template"] = template.name
    info["seconds"] = {
        "load_and_merge": round(loaded - started, 2),
        "write": round(time.perf_counter() - loaded, 2),
    }
    if modelfile:
        info["modelfile"] = str(write_modelfile(path, template, tokenizer))
    (path.parent / (path.name + ".json")).write_text(
        json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return info
