"""Stop tokens of a run directory: the ids a template ends a reply with, written where any loader looks.

`llama-sft chat` stops at EOS and at every stop string of the training template. vLLM, TGI and
plain `model.generate` know nothing of templates: they stop at the `eos_token_id` list of
`generation_config.json`. Training (adapter or full model) and merging both write that file from
the same function here, so every consumer stops where chat does. This module sits below train,
generation and export (it needs only the template), so each of them can import it.
"""

from __future__ import annotations

from pathlib import Path

from .data.templates import SpecialText, Template

GENERATION_CONFIG = "generation_config.json"


def stop_token_ids(template: Template, tokenizer, extra: tuple[str, ...] = ()) -> list[int]:
    """EOS, then every stop string of the template (and `extra`) that is a single token in the
    vocabulary, e.g. `</s>`, `<|im_end|>`, `<|eot_id|>`. Multi-token stop strings ("USER:") cannot be
    an EOS id; chat cuts at them as text."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stops = (*template.stop(SpecialText.from_tokenizer(tokenizer)), *extra)
    ids += [vocab[s] for s in stops if s in vocab]
    return list(dict.fromkeys(ids))


def with_stop_ids(generation_config, template: Template, tokenizer):
    """A copy of `generation_config` (or a fresh one) whose `eos_token_id` holds the template's stop
    ids followed by any EOS ids it already had (a base such as LLaMA-3-Instruct lists several)."""
    import copy

    from transformers import GenerationConfig

    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    old = config.eos_token_id
    old = [] if old is None else [old] if isinstance(old, int) else list(old)
    ids = list(dict.fromkeys([*stop_token_ids(template, tokenizer), *old]))
    config.eos_token_id = ids[0] if len(ids) == 1 else ids
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.bos_token_id is None and tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def write_generation_config(out_dir: str | Path, template: Template, tokenizer, base=None) -> list[int]:
    """Write `out_dir/generation_config.json` with the stop ids; returns the `eos_token_id` list.

    `base` is the model's own generation config (sampling defaults are kept); when `out_dir` already
    has one (a full-model save wrote it), that one is the starting point.
    """
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    if (out_dir / GENERATION_CONFIG).exists():
        base = GenerationConfig.from_pretrained(str(out_dir))
    config = with_stop_ids(base, template, tokenizer)
    config.save_pretrained(str(out_dir))
    ids = config.eos_token_id
    return [ids] if isinstance(ids, int) else list(ids)
