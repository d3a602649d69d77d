"""Load a tokenizer the way LLaMA was trained to see text."""

from __future__ import annotations


def use_spm_normalizer(tokenizer) -> bool:
    """Give a LLaMA-1/2 SentencePiece-style tokenizer Meta's normalizer; returns True if changed.

    transformers 5 rebuilds `LlamaTokenizer` with Metaspace(prepend_scheme="first"), which puts
    no "▁" after a special token, so "<s>Hello" becomes [<s>, "Hello"] instead of Meta's
    [<s>, "▁Hello"]: chat prompts rendered with BOS/EOS text then tokenize unlike the model's
    training. Meta's tokenizer.json uses Prepend("▁") + Replace(" ", "▁") with no pre-tokenizer,
    which matches llama.cpp's reference test vectors; we restore that.
    """
    from tokenizers import normalizers, pre_tokenizers

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.pre_tokenizer, pre_tokenizers.Metaspace):
        return False
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    return True


def use_tiktoken_merges(tokenizer) -> bool:
    """Give a LLaMA-3 BPE tokenizer tiktoken's lookup order; returns True if changed.

    LLaMA-3's vocabulary comes from tiktoken, which takes a pre-token whole when it is in the
    vocabulary before applying merges; Meta's tokenizer.json says so with `ignore_merges: true`.
    Converters that drop the flag (transformers' GGUF loader does) split some words differently
    ("Việt" becomes three tokens instead of one), unlike the model's training and llama.cpp.
    """
    from tokenizers import models

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if tokenizer.bos_token != "<|begin_of_text|>" or backend is None:
        return False
    if not isinstance(backend.model, models.BPE) or backend.model.ignore_merges:
        return False
    backend.model.ignore_merges = True
    return True


def prepare_tokenizer(tokenizer):
    """Normalizer / merge-order fixes and a pad token (LLaMA has none; unk as FastChat does, else eos).

    Padding never decides labels here (labels come from character spans), so an EOS used as pad
    is still trained where it ends a reply.
    """
    use_spm_normalizer(tokenizer)
    use_tiktoken_merges(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, **kwargs):
    """AutoTokenizer (fast, with offsets), then `prepare_tokenizer`. Works offline on local dirs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{name_or_path}: a fast (Rust) tokenizer is needed for character offsets; got {type(tokenizer).__name__}")
    return prepare_tokenizer(tokenizer)
