"""Small helpers shared by subcommands: tokenizer and template resolution, index ranges."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_data_path() -> Path:
    """The ShareGPT sample shipped with the package (used by the demo and the docs)."""
    return Path(str(resources.files("llama_sft") / "resources" / "sample_sharegpt.json"))


def resolve_tokenizer(name: str | None, trust_remote_code: bool = False):
    """'tiny' builds the test tokenizer locally; anything else is a hub id or directory.

    There is no default: token counts, truncation and masks depend on the vocabulary, and numbers
    from a 600-token toy tokenizer silently stood in for the model's own."""
    if name is None:
        from .errors import UsageError

        raise UsageError(
            "pass --tokenizer DIR_OR_HUB_ID: the model's tokenizer (its model directory works), since token "
            "counts and masks depend on it ('tiny' = the small built-in test tokenizer)"
        )
    if name == "tiny":
        from llama_sft.tiny import build_tokenizer

        return build_tokenizer()
    from llama_sft.data.tokenizer import load_tokenizer

    return load_tokenizer(name, trust_remote_code=trust_remote_code)


def describe_tokenizer(name: str, tokenizer) -> str:
    """One line naming the tokenizer a report was computed with."""
    return f"{name} ({type(tokenizer).__name__}, {len(tokenizer):,} tokens, bos {tokenizer.bos_token!r}, eos {tokenizer.eos_token!r})"


def parse_index(spec: str, total: int) -> list[int]:
    """'5', '0:50' (Python slice) or 'all'."""
    if spec == "all":
        return list(range(total))
    if ":" in spec:
        start, _, stop = spec.partition(":")
        return list(range(total))[slice(int(start) if start else None, int(stop) if stop else None)]
    index = int(spec)
    if not -total <= index < total:
        from .errors import UsageError

        raise UsageError(f"--index {index} is out of range: the file has {total} usable conversation(s)")
    return [index % total]


def add_data_arguments(parser, tokenizer: bool = True, template: bool = True) -> None:
    parser.add_argument(
        "--data_format",
        default="auto",
        choices=["auto", "sharegpt", "openai", "alpaca"],
        help="record shape (default: detected per record)",
    )
    parser.add_argument(
        "--skip_bad", action="store_true", help="skip records with errors (counted and reported)"
    )
    parser.add_argument("--strict", action="store_true", help="treat repairs as errors")
    if tokenizer:
        parser.add_argument(
            "--tokenizer",
            "--model_name_or_path",
            dest="tokenizer",
            default=None,
            help="required: the model's tokenizer, as a model directory, tokenizer directory or hub id "
            "('tiny' = a small LLaMA-style BPE built locally, for trying the command out)",
        )
        parser.add_argument(
            "--model_max_length", type=int, default=2048, help="truncate longer conversations"
        )
        parser.add_argument(
            "--special_tokens_in_content",
            default="warn",
            choices=["warn", "error", "split"],
            help="special-token strings (</s>, <|eot_id|>, ...) in content: warn (report), error (refuse; "
            "--strict implies it) or split (count them as plain text, as training with this policy does)",
        )
        parser.add_argument(
            "--masking",
            default="train_on_assistant",
            choices=["train_on_assistant", "train_on_last", "train_on_all"],
        )
    if template:
        parser.add_argument(
            "--conv_template",
            default="vicuna_v1.1",
            help="built-in template name, 'tokenizer', or a .yaml/.jinja file",
        )
