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


class TerminatorError(ValueError):
    """Replies would be trained without a token that ends them."""


def check_terminator(tokenizer, template) -> list[str]:
    """Refuse a tokenizer/template pair whose replies end without a control token; returns warnings.

    A reply is learned to stop only if its supervised span ends with one token the generator stops
    on: EOS, or a template stop string that the tokenizer keeps whole (`<|eot_id|>`, `<|im_end|>`).
    A tokenizer without `eos_token` renders `{eos}` as nothing, and one whose EOS string is not a
    special token cuts it into ordinary pieces: either way the model would learn to run on, silently.
    A BOS string that is not special only changes the prompt's first tokens, so it is a warning.
    """
    from .encode import labels_from_offsets
    from .messages import Message
    from .templates import SpecialText

    special = SpecialText.from_tokenizer(tokenizer)
    rendered = template.render([Message("user", "Hi"), Message("assistant", "Hello")], special=special)
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    labels, _ = labels_from_offsets(enc["input_ids"], enc["offset_mapping"], rendered.spans)
    supervised = [i for i in labels if i != -100]
    vocab = tokenizer.get_vocab()
    stop_ids = {tokenizer.eos_token_id} | {vocab[s] for s in template.stop(special) if s in vocab}
    # Control tokens a template may end replies with (a Jinja template's span also holds the newline after).
    stop_ids |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    stop_ids -= {None, tokenizer.bos_token_id, tokenizer.unk_token_id}
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not any(i in stop_ids for i in supervised):
        s, e = rendered.spans[-1]
        tail = rendered.text[max(s, e - 12) : e]
        if not tokenizer.eos_token:
            why = "the tokenizer has no eos_token, so {eos} renders as nothing"
        elif tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"] != [
            tokenizer.eos_token_id
        ]:
            pieces = tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            why = f"eos_token {tokenizer.eos_token!r} is not a special token here: it tokenizes as {len(pieces)} ordinary pieces {pieces}"
        else:
            why = f"the reply ends with {tail!r}, not with EOS or a stop token"
        raise TerminatorError(
            f"{name} with template {template.name!r}: replies would be trained without a terminator ({why}), so "
            "the model would not learn to stop. Fix: set eos_token in the tokenizer's tokenizer_config.json to "
            "its special end token (e.g. '</s>' for LLaMA-2, '<|eot_id|>' for LLaMA-3 instruct), or use a "
            "template whose replies end with a special token (--conv_template)"
        )
    warnings = []
    bos = tokenizer.bos_token
    if bos and rendered.text.startswith(bos):
        ids = tokenizer(bos, add_special_tokens=False)["input_ids"]
        if ids != [tokenizer.bos_token_id]:
            warnings.append(
                f"{name}: bos_token {bos!r} is not a special token (it tokenizes as {ids}), so every prompt "
                "starts with it as plain text; set bos_token to the tokenizer's special start token"
            )
    return warnings
