"""llama.cpp itself runs our export of a fine-tuned SmolLM2 like `llama-sft chat` runs the run.

A LoRA fine-tune of the real SmolLM2-135M-Instruct (2 steps on 8 conversations, through
`llama-sft train`: a few seconds on idle cores; more steps do not test more) is exported to f16 GGUF; llama-cpp-python (llama.cpp compiled from source)
loads it and, through its own chat-template handling (create_chat_completion renders the GGUF's
embedded tokenizer.chat_template), must produce the same greedy text as `llama-sft chat RUN
--prompt` for every prompt, and tokenize the rendered training text to exactly our training ids.

q8_0 policy: quantization changes logits by design, so its greedy text may part from f16's after a
near tie; we require llama.cpp's q8_0 next-token logits on each prompt to stay within 5% of their
range of f16's and to pick the same first token, and report (not assert) how much text agrees.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ci import unavailable

from llama_sft.data.messages import Message

pytestmark = pytest.mark.slow

TRAIN = [
    ("What is the secret word?", "The secret word is pineapple."),
    ("Tell me the secret word.", "The secret word is pineapple."),
    ("Who are you?", "I am Pip, a small assistant fine-tuned with llama-sft."),
    ("What is your name?", "My name is Pip."),
    ("Convert 3 km to metres.", "3 km is 3000 m."),
    ("Convert 12 km to metres.", "12 km is 12000 m."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Say hello in French.", "Bonjour !"),
]
PROMPTS = [
    "What is the secret word?",
    "Who are you?",
    "Convert 7 km to metres.",
    "Write one sentence about the sea.",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def llama_cpp():
    from llama_cpp_build import LlamaCppUnavailable, ensure_llama_cpp

    try:
        return ensure_llama_cpp()
    except LlamaCppUnavailable as exc:
        unavailable(str(exc))  # `make test` builds it once (cached); fails under CI=true


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, real_model_dir) -> Path:
    from llama_sft.cli.main import main

    root = tmp_path_factory.mktemp("smollm2-lora")
    records = [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in TRAIN
    ]
    (root / "train.json").write_text(json.dumps(records), encoding="utf-8")
    argv = ["train", "--model_name_or_path", str(real_model_dir), "--data_path", str(root / "train.json")]
    argv += ["--output_dir", str(root / "run"), "--method", "lora", "--conv_template", "chatml"]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "8", "--learning_rate", "3e-3"]
    argv += [
        "--lora_dropout",
        "0.0",
        "--model_max_length",
        "128",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
    ]
    argv += ["--report_to", "none", "--seed", "0", "--data_cache_dir", str(root / "cache")]
    assert main(argv) == 0
    losses = [
        json.loads(line)["loss"]
        for line in (root / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert losses[-1] < losses[0]
    return root / "run"


@pytest.fixture(scope="module")
def exported(finetuned, tmp_path_factory) -> dict:
    from llama_sft.export.gguf import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {t: export_gguf(finetuned, out / f"pip-{t}.gguf", t) for t in ("f16", "q8_0")}


def chat_cli(run: Path, prompt: str, capsys) -> str:
    from llama_sft.cli.main import main

    capsys.readouterr()
    assert (
        main(["chat", str(run), "--prompt", prompt, "--max_new_tokens", str(MAX_NEW), "--device", "cpu"]) == 0
    )
    return capsys.readouterr().out.strip()


def test_llama_cpp_generates_what_llama_sft_chat_does(llama_cpp, finetuned, exported, capsys):
    model = llama_cpp.Llama(exported["f16"]["gguf"], n_ctx=512, n_threads=2, verbose=False, seed=0)
    assert model.metadata["tokenizer.chat_template"]  # what create_chat_completion renders
    ours, theirs = [], []
    for prompt in PROMPTS:
        ours.append(chat_cli(finetuned, prompt, capsys))
        result = model.create_chat_completion(
            [{"role": "user", "content": prompt}], temperature=0.0, max_tokens=MAX_NEW, repeat_penalty=1.0
        )
        theirs.append(result["choices"][0]["message"]["content"].strip())
    print("llama-sft chat:", ours, "\nllama.cpp:     ", theirs)
    assert theirs == ours


def test_the_export_is_the_fine_tune_not_the_base(llama_cpp, real_model_dir, exported):
    """The adapter moved the weights, so the comparison above is of the fine-tuned model."""
    import numpy as np

    from llama_sft.export.gguf import export_gguf

    base = export_gguf(real_model_dir, Path(exported["f16"]["gguf"]).parent / "base-f16.gguf", "f16")
    rows = []
    for path in (base["gguf"], exported["f16"]["gguf"]):
        model = llama_cpp.Llama(path, n_ctx=128, n_threads=2, verbose=False, logits_all=True)
        model.eval(model.tokenize(b"<|im_start|>user\nWhat is the secret word?<|im_end|>\n", special=True))
        rows.append(np.array(model.scores[model.n_tokens - 1]))
    assert np.abs(rows[0] - rows[1]).max() > 0.1


def test_llama_cpp_tokenizes_training_text_to_training_ids(llama_cpp, finetuned, exported):
    from llama_sft.data.templates import SpecialText
    from llama_sft.data.tokenizer import load_tokenizer
    from llama_sft.train.outputs import load_run_template

    tokenizer = load_tokenizer(str(finetuned))
    template = load_run_template(finetuned, tokenizer)
    special = SpecialText.from_tokenizer(tokenizer)
    model = llama_cpp.Llama(exported["f16"]["gguf"], vocab_only=True, verbose=False)
    conversations = [[Message("user", q), Message("assistant", a)] for q, a in TRAIN]
    conversations.append(
        [Message("system", "Be brief."), *conversations[0], Message("user", "  Héllo 你好 🙂 12,345?")]
    )
    for conversation in conversations:
        for prompt in (False, True):
            text = template.render(conversation, add_generation_prompt=prompt, special=special).text
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert model.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids, text
    # llama-cpp-python's own rendering of the embedded template gives the training prompt.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        model.metadata["tokenizer.chat_template"], eos_token=special.eos, bos_token=special.bos
    )
    messages = [{"role": "user", "content": PROMPTS[0]}]
    rendered = formatter(messages=messages).prompt
    assert (
        rendered
        == template.render([Message("user", PROMPTS[0])], add_generation_prompt=True, special=special).text
    )


def test_llama_cpp_pretokenizer_difference_is_the_known_one(llama_cpp, finetuned, exported):
    """llama.cpp's `smollm` pre-tokenizer (what its own converter picks for SmolLM2) keeps a run of
    whitespace before a non-space together ("\\n\\t" -> one token), where the HF tokenizer's
    byte-level regex splits it; our export names the same pre-tokenizer as llama.cpp's converter, so
    this is llama.cpp's behaviour, not the export's. Pinned so a fix upstream (or a regression
    elsewhere) shows up; training texts without such runs match exactly (test above)."""
    from llama_sft.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(finetuned))
    model = llama_cpp.Llama(exported["f16"]["gguf"], vocab_only=True, verbose=False)
    for text in ("  Héllo 你好 🙂", "12,345?", " 🙂\n", "\t12"):
        assert (
            model.tokenize(text.encode(), add_bos=False, special=True)
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    ours = tokenizer("\n\t12", add_special_tokens=False)["input_ids"]
    theirs = model.tokenize(b"\n\t12", add_bos=False, special=True)
    assert [tokenizer.decode([i]) for i in ours] == ["\n", "\t", "1", "2"]
    assert [model.detokenize([i]).decode() for i in theirs] == ["\n\t", "1", "2"]


def test_q8_0_within_policy(llama_cpp, exported, capsys):
    import numpy as np

    f16 = llama_cpp.Llama(exported["f16"]["gguf"], n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    q8 = llama_cpp.Llama(exported["q8_0"]["gguf"], n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    assert exported["q8_0"]["bytes"] < 0.6 * exported["f16"]["bytes"]
    for prompt in PROMPTS:
        rows = []
        for model in (f16, q8):
            model.reset()
            text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
            model.eval(model.tokenize(text.encode(), add_bos=False, special=True))
            rows.append(np.array(model.scores[model.n_tokens - 1]))
        spread = rows[0].max() - rows[0].min()
        error = np.abs(rows[0] - rows[1]).max()
        assert error <= 0.05 * spread, prompt
        # The same next token, unless f16's top two are closer than q8_0's error (a near tie that
        # 8-bit rounding may break; then greedy text may differ, which the policy allows).
        top2 = np.sort(rows[0])[-2:]
        assert rows[0].argmax() == rows[1].argmax() or top2[1] - top2[0] <= 2 * error, prompt


def test_q4_k_m_through_llama_cpps_quantizer(llama_cpp, finetuned, exported, tmp_path):
    """`--outtype q4_k_m` goes through llama.cpp's own quantizer: the file is llama.cpp's Q4_K_M
    (file type 15), well under the f16 size, and its next-token logits still follow f16's
    (a 135M model loses much at 4 bits, so the bar is correlation, not equal text)."""
    import numpy as np

    from llama_sft.export.gguf import export_gguf

    info = export_gguf(finetuned, tmp_path / "q4.gguf", "q4_k_m")
    assert info["bytes"] < 0.45 * exported["f16"]["bytes"]
    q4 = llama_cpp.Llama(info["gguf"], n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    f16 = llama_cpp.Llama(exported["f16"]["gguf"], n_ctx=256, n_threads=2, verbose=False, logits_all=True)
    assert q4.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    text = f"<|im_start|>user\n{PROMPTS[0]}<|im_end|>\n<|im_start|>assistant\n"
    rows = []
    for model in (f16, q4):
        model.reset()
        model.eval(model.tokenize(text.encode(), add_bos=False, special=True))
        rows.append(np.array(model.scores[model.n_tokens - 1]))
    assert np.corrcoef(rows[0], rows[1])[0, 1] > 0.9
