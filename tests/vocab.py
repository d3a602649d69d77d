"""Tokenizers for tests: a readable word-level dummy, and LLaMA's real vocabularies.

LLaMA-1/2's SentencePiece vocabulary (32k) and LLaMA-3's BPE (128k) ship as vocab-only GGUF files,
with llama.cpp's tokenizer test vectors beside them, inside the llama-cpp-python source
distribution on PyPI. We fetch that once with pip, keep only the six files, and cache the
transformers conversion (about 20 s) so later runs load in about a second. Nothing comes from the
Hugging Face hub.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>")
# Control tokens of the built-in templates; special in the dummy tokenizer so they split off.
CONTROL_TOKENS = (
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
)


def word_tokenizer(words: Sequence[str]):
    """Whitespace-split word-level tokenizer: ids 0-2 are <unk> <s> </s>, then `words` in order.

    Specials and template control tokens are matched anywhere (as in LLaMA's tokenizers), other
    text splits on whitespace, so expected ids read like the text. pad == eos, as in LLaMA setups.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for token in [*SPECIALS, *words]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (*SPECIALS, *CONTROL_TOKENS) if t in vocab]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


# --- real LLaMA vocabularies from llama.cpp -------------------------------------------------------

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
MODELS_DIR = "vendor/llama.cpp/models"
KINDS = ("spm", "bpe")  # LLaMA-1/2 SentencePiece, LLaMA-3 BPE
VOCAB_FILES = tuple(f"ggml-vocab-llama-{kind}.gguf{ext}" for kind in KINDS for ext in ("", ".inp", ".out"))
VECTOR_SEPARATOR = "\n__ggml_vocab_test__\n"


class VocabUnavailable(RuntimeError):
    """The sdist could not be downloaded (offline, PyPI down): tests skip on a laptop and fail under
    CI=true (`ci.unavailable`)."""


def vocab_cache() -> Path:
    return Path(os.environ.get("LLAMA_SFT_VOCAB_CACHE") or Path.home() / ".cache" / "llama-sft" / "vocab")


def fetch_ggml_vocabs(cache: Path | None = None) -> Path:
    """The directory holding the six vocab/vector files; downloads the sdist the first time."""
    cache = cache or vocab_cache()
    target = cache / "llama.cpp-models"
    if all((target / name).is_file() for name in VOCAB_FILES):
        return target
    if cache in _failed_downloads:  # once per test session is enough
        raise _failed_downloads[cache]
    try:
        return _download(cache, target)
    except VocabUnavailable as exc:
        _failed_downloads[cache] = exc
        raise


_failed_downloads: dict[Path, VocabUnavailable] = {}


def _download(
    cache: Path, target: Path, names: Sequence[str] = VOCAB_FILES, folder: str = MODELS_DIR
) -> Path:
    """Fetch the sdist and keep only `names` from its `folder` (streamed: nothing else is written)."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd = [*pip, LLAMA_CPP_PYTHON, "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise VocabUnavailable(f"pip download {LLAMA_CPP_PYTHON} failed: {exc}") from exc
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise VocabUnavailable(
                f"pip download {LLAMA_CPP_PYTHON} failed: {(proc.stderr or proc.stdout)[-500:]}"
            )
        staging = Path(tmp) / "models"
        staging.mkdir()
        with tarfile.open(sdists[0]) as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in names and member.name.endswith(f"{folder}/{name}"):
                    (staging / name).write_bytes(tar.extractfile(member).read())
        missing = [name for name in names if not (staging / name).is_file()]
        if missing:  # the download worked but the layout changed: a real failure, not a skip
            raise FileNotFoundError(f"{sdists[0].name} has no {folder}/{missing}")
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    return target


# Official chat templates that llama.cpp keeps (models/templates/), the references for tool calling.
TEMPLATES_DIR = f"{MODELS_DIR}/templates"
TEMPLATE_FILES = tuple(
    f"{name}.jinja"
    for name in (
        "meta-llama-Llama-3.1-8B-Instruct",
        "meta-llama-Llama-3.2-3B-Instruct",
        "meta-llama-Llama-3.3-70B-Instruct",
        "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
        "fireworks-ai-llama-3-firefunction-v2",
    )
)


def fetch_official_templates(cache: Path | None = None) -> Path:
    """The directory holding the official Jinja templates above; downloads the sdist the first time."""
    cache = cache or vocab_cache()
    target = cache / "llama.cpp-templates"
    if all((target / name).is_file() for name in TEMPLATE_FILES):
        return target
    key = cache / "templates"
    if key in _failed_downloads:
        raise _failed_downloads[key]
    try:
        return _download(cache, target, TEMPLATE_FILES, TEMPLATES_DIR)
    except VocabUnavailable as exc:
        _failed_downloads[key] = exc
        raise


def converted_dir(kind: str, cache: Path | None = None) -> Path:
    """transformers' GGUF conversion as saved by save_pretrained, keyed by transformers' version
    (the conversion is where the differences we test for come from)."""
    import transformers

    cache = cache or vocab_cache()
    target = cache / f"transformers-{transformers.__version__}" / f"llama-{kind}"
    if (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoTokenizer

    models = fetch_ggml_vocabs(cache)
    tokenizer = AutoTokenizer.from_pretrained(str(models), gguf_file=f"ggml-vocab-llama-{kind}.gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".llama-{kind}-"))
    tokenizer.save_pretrained(str(staging))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target


def load_llama_tokenizer(kind: str, prepared: bool = True):
    """LLaMA's real tokenizer, as transformers converts it from GGUF (`prepared=False`) or after
    `llama_sft.data.tokenizer.prepare_tokenizer` (the way training loads it).

    The cache holds the unprepared conversion, so every run checks what `prepare_tokenizer` fixes.
    """
    from transformers import AutoTokenizer

    from llama_sft.data.tokenizer import prepare_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(converted_dir(kind)))
    return prepare_tokenizer(tokenizer) if prepared else tokenizer


def read_vectors(kind: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors: (text, expected ids) pairs.

    The `.inp` file is every text followed by the separator line; the `.out` file has one line per
    text, each id preceded by a space (an empty line for the empty text).
    """
    models = fetch_ggml_vocabs()
    inp = (models / f"ggml-vocab-llama-{kind}.gguf.inp").read_text(encoding="utf-8")
    out = (models / f"ggml-vocab-llama-{kind}.gguf.out").read_text(encoding="utf-8")
    assert inp.endswith(VECTOR_SEPARATOR) and out.endswith("\n")
    texts = inp.split(VECTOR_SEPARATOR)[:-1]
    ids = [[int(x) for x in line.split()] for line in out.split("\n")[:-1]]
    assert len(texts) == len(ids), (len(texts), len(ids))
    return list(zip(texts, ids, strict=True))
