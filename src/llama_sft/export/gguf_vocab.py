"""The tokenizer as llama.cpp reads it from a GGUF: vocabulary, scores or merges, token types,
special ids and the BOS/EOS flags, taken from the tokenizer the run trained with.

llama.cpp does not read tokenizer.json; it re-implements two tokenizers from GGUF metadata:
* `llama` (SentencePiece, LLaMA-1/2): pieces with "▁" for spaces, `<0xXX>` byte pieces, and a
  score per piece; it merges the adjacent pair whose joined piece scores highest. Our tokenizers
  are transformers' BPE form of the same model, where a merge's rank is its priority, so each
  piece scores minus the rank of the best merge that yields it (same order, same ids).
* `gpt2` (byte-level BPE, LLaMA-3 and SmolLM2): tokens and merges as in tokenizer.json, and a
  pre-tokenizer *name* standing for the regex that splits text before merging. We name it from
  the tokenizer's own pre-tokenizer and refuse a tokenizer we cannot name, rather than let
  llama.cpp split text differently from training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..data.templates import SpecialText, Template

# TokenType values of the GGUF format (gguf.TokenType), spelled out so this module needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# LLaMA-3's split regex (tokenizer.json of Meta-Llama-3, also what transformers writes for 'llama-bpe').
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class VocabError(ValueError):
    """The tokenizer cannot be described to llama.cpp without changing its ids."""


@dataclass
class GGUFVocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str | None  # llama.cpp's pre-tokenizer name (gpt2 only)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    add_space_prefix: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_eos: bool = False


def _backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VocabError(
            f"{type(tokenizer).__name__}: a fast tokenizer (tokenizer.json) is needed for GGUF export"
        )
    return json.loads(backend.to_str())


def _walk(node) -> list[dict]:
    """A normalizer/pre-tokenizer and, for a Sequence, its parts."""
    if not node:
        return []
    parts = node.get("pretokenizers") or node.get("normalizers")
    return [node, *[p for part in parts for p in _walk(part)]] if parts else [node]


def _merge_list(model: dict) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model.get("merges", [])]


def _token_table(tokenizer, data: dict, n_vocab: int) -> tuple[list[str | None], dict[int, dict]]:
    tokens: list[str | None] = [None] * n_vocab
    for text, index in data["model"]["vocab"].items():
        if index < n_vocab:
            tokens[index] = text
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    for index, entry in added.items():
        if index >= n_vocab:
            raise VocabError(
                f"token {entry['content']!r} has id {index}, beyond the model's {n_vocab} embeddings"
            )
        tokens[index] = entry["content"]
    return tokens, added


def _gpt2_pre(data: dict) -> str:
    """llama.cpp's name for the tokenizer's way of splitting text before BPE."""
    parts = _walk(data.get("pre_tokenizer"))
    splits = [p for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    digits = [p for p in parts if p.get("type") == "Digits" and p.get("individual_digits")]
    if len(splits) == 1 and splits[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "llama-bpe"
    if not splits and byte_level and byte_level[0].get("use_regex", True):
        if digits:
            return "smollm"  # GPT-2's regex with every digit on its own: llama.cpp's 'smollm'
        # GPT-2's regex alone. If no token holds two digits, splitting digits first changes no id,
        # so llama.cpp's 'smollm' (SmolLM's vocabulary, as transformers' GGUF reader rebuilds it) is exact.
        vocab = data["model"]["vocab"]
        if not any(sum(c.isdigit() for c in t) > 1 for t in vocab):
            return "smollm"
        return "gpt2"
    found = [p.get("type") for p in parts] or ["none"]
    raise VocabError(
        f"byte-level BPE with pre-tokenizer {found}: not one llama.cpp knows by name (LLaMA-3's "
        "regex -> 'llama-bpe', GPT-2's regex with single digits -> 'smollm'); pass --pre NAME if you know it"
    )


def _spm_scores(tokens: list[str | None], merges: list[tuple[str, str]]) -> list[float]:
    best: dict[str, int] = {}
    for rank, (left, right) in enumerate(merges):
        best.setdefault(left + right, rank)
    # Pieces no merge yields (single characters, bytes, specials) are never merge candidates by score.
    return [float(-best[t]) if t in best else 0.0 for t in tokens]


def _add_space_prefix(data: dict) -> bool:
    for node in _walk(data.get("normalizer")):
        if node.get("type") == "Prepend" and node.get("prepend") == "▁":
            return True
    for node in _walk(data.get("pre_tokenizer")):
        if node.get("type") == "Metaspace":
            return node.get("prepend_scheme", "always") != "never"
    return False


def opens_with_bos(template: Template, tokenizer) -> bool:
    """Whether the training text of every conversation starts with the template's {bos} (then
    llama.cpp and Ollama add BOS themselves, once, and llama.cpp strips it from a rendered template
    that also has it). Rendered with a sentinel for BOS, so a template that merely starts with the
    same text as a marker (chatml's <|im_start|> is SmolLM2's BOS token) does not count."""
    from ..data.messages import Message

    if not SpecialText.from_tokenizer(tokenizer).bos:
        return False
    sentinel = SpecialText(bos="\x00bos\x00", eos=SpecialText.from_tokenizer(tokenizer).eos)
    probes = [[Message("user", "Hi")], [Message("system", "S"), Message("user", "Hi")]]
    return all(
        template.render(p, add_generation_prompt=True, special=sentinel).text.startswith(sentinel.bos)
        for p in probes
    )


def build_vocab(tokenizer, template: Template, n_vocab: int, pre: str | None = None) -> GGUFVocab:
    """`n_vocab` is the model's embedding rows; ids past the tokenizer's are written as unused pads."""
    data = _backend(tokenizer)
    model = data["model"]
    if model.get("type") != "BPE":
        raise VocabError(
            f"tokenizer model {model.get('type')!r}: GGUF export supports LLaMA's BPE tokenizers"
        )
    if len(tokenizer) > n_vocab:
        raise VocabError(f"the tokenizer has {len(tokenizer)} tokens but the model only {n_vocab} embeddings")
    table, added = _token_table(tokenizer, data, n_vocab)
    merges = _merge_list(model)
    byte_level = any(p.get("type") == "ByteLevel" for p in _walk(data.get("pre_tokenizer")))
    tokens, types = [], []
    for index, text in enumerate(table):
        if text is None:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif index in added:
            tokens.append(text)
            kind = UNKNOWN if text == tokenizer.unk_token and not byte_level else CONTROL
            types.append(kind if added[index].get("special") else USER_DEFINED)
        elif not byte_level and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            tokens.append(text)
            types.append(BYTE)
        else:
            tokens.append(text)
            types.append(NORMAL)
    vocab = GGUFVocab(model="gpt2" if byte_level else "llama", pre=None, tokens=tokens, types=types)
    if byte_level:
        vocab.pre = pre or _gpt2_pre(data)
        vocab.merges = [f"{a} {b}" for a, b in merges]
    else:
        if not model.get("byte_fallback"):
            raise VocabError("a SentencePiece-style BPE without byte fallback is not LLaMA's tokenizer")
        vocab.scores = _spm_scores(table, merges)
        vocab.add_space_prefix = _add_space_prefix(data)
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    # End of turn: a template stop string that is one token (<|eot_id|>, <|im_end|>) and not EOS.
    specials = {entry["content"]: index for index, entry in added.items() if entry.get("special")}
    stops = [specials[s] for s in template.stop(SpecialText.from_tokenizer(tokenizer)) if s in specials]
    eot = [i for i in stops if i != ids["eos"]]
    if eot:
        ids["eot"] = eot[0]
    vocab.special_ids = {k: v for k, v in ids.items() if v is not None}
    vocab.add_bos = opens_with_bos(template, tokenizer)
    return vocab


def write_vocab(writer, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    adders = {
        "bos": writer.add_bos_token_id,
        "eos": writer.add_eos_token_id,
        "unk": writer.add_unk_token_id,
        "pad": writer.add_pad_token_id,
        "eot": writer.add_eot_token_id,
    }
    for name, token_id in vocab.special_ids.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
