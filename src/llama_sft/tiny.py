"""Tiny LLaMA models and tokenizers built locally, for tests, the demo and CPU benchmarks.

No hub access is needed: the tokenizer is a BPE trained in well under a second with `tokenizers`
(Metaspace pre-tokenizer and the 256 `<0x..>` byte tokens as ordinary vocabulary, so byte
fallback works the way it does in LLaMA's SentencePiece vocabulary), wrapped as transformers'
`LlamaTokenizer`; the model is a `LlamaForCausalLM` with random weights.
"""

from __future__ import annotations

from collections.abc import Iterable

from .data.tokenizer import prepare_tokenizer

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# Control tokens of the built-in templates, so every template's markers are single tokens.
EXTRA_SPECIAL = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
]
DEFAULT_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.",
    "USER: What is 2 + 3? ASSISTANT: 5</s>USER: And 10 - 4? ASSISTANT: 6",
    "[INST] <<SYS>> system <</SYS>> Hello there [/INST] Hi! How can I help you today?",
    "### Instruction: Write a poem. ### Response: Roses are red, violets are blue.",
    "The quick brown fox jumps over the lazy dog. Convert 3 km to m: 3000 m. 12 inches is 1 foot.",
    "Héllo wörld, ça va? 你好，世界。 Emoji: 🙂 and tabs\tand\nnewlines.",
]


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 600, extra_special: bool = True):
    """Train a small LLaMA-style BPE on `texts` and wrap it as a transformers LlamaTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Split on words while training so merges never cross a space, and keep digits out of merges, as
    # LLaMA's SentencePiece does: " 5" is then "▁" + "5", the case the loss mask must get right.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(byte_tokens),
        special_tokens=SPECIAL_TOKENS + byte_tokens,  # byte tokens become ordinary vocab entries below
        show_progress=False,
        initial_alphabet=list("▁"),
    )
    bpe.train_from_iterator(list(texts or DEFAULT_CORPUS) * 2, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = (
        [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in bpe.model.get_merges()]
        if hasattr(bpe.model, "get_merges")
        else _merges_from_json(bpe)
    )
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    prepare_tokenizer(tokenizer)
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": EXTRA_SPECIAL})
    tokenizer.pad_token = tokenizer.eos_token  # pad == eos on purpose: tests prove EOS is still trained
    return tokenizer


def _merges_from_json(bpe) -> list[tuple[str, str]]:
    import json

    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def tiny_llama_config(
    tokenizer,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_tiny_model(tokenizer, seed: int = 0, **config_kwargs):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(tokenizer, **config_kwargs))


def save_tiny_model(path, tokenizer=None, seed: int = 0, **config_kwargs):
    """Write a tiny random LLaMA and its tokenizer to `path` (a local 'hub model' for tests)."""
    tokenizer = tokenizer or build_tokenizer()
    model = build_tiny_model(tokenizer, seed=seed, **config_kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
