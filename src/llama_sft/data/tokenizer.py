"""Load a tokenizer the way LLaMA was trained to see text."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


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
        raise ValueError(
            f"{name_or_path}: a fast (Rust) tokenizer is needed for character offsets; got {type(tokenizer).__name__}"
        )
    return prepare_tokenizer(tokenizer)


def save_tokenizer(tokenizer, template, out_dir) -> None:
    """Save with the training template as `chat_template`, loadable by plain `AutoTokenizer`.

    A class-specific loader may rebuild the tokenizer's normalizer instead of reading
    tokenizer.json (transformers 5's LlamaTokenizer does), and then tokenizes the same prompt into
    other ids than training did. When a plain reload disagrees, the saved class becomes the generic
    fast tokenizer, which reads tokenizer.json as is.
    """
    import json

    from .messages import Message
    from .templates import SpecialText

    tokenizer.chat_template = template.to_jinja()
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(str(out_dir))
    probe = [
        Message("user", "Hello there, 12 km?"),
        Message("assistant", "Hi! 12000 m."),
        Message("user", "Thanks"),
    ]
    text = template.render(
        probe, add_generation_prompt=True, special=SpecialText.from_tokenizer(tokenizer)
    ).text
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    if _reloaded_ids(out_dir, text) != expected:
        path = out_dir / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if _reloaded_ids(out_dir, text) != expected:
            log.warning(
                "%s: AutoTokenizer tokenizes the chat prompt differently from training; servers may see other ids",
                out_dir,
            )


def _reloaded_ids(out_dir: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(out_dir))(text, add_special_tokens=False)["input_ids"]
