"""Preprocessing throughput: llama-sft's encoder against FastChat's `preprocess`, same data and tokenizer.

    python benchmarks/preprocess.py --quick     # about a minute; last line is the ratio
    python benchmarks/preprocess.py             # full run; writes benchmarks/results/preprocess.{json,md}

FastChat (PyPI `fschat`) is never a dependency of llama-sft. It lives in a separate venv,
`.venv-bench/` at the repository root, made once with:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0            # CPU wheel first, as the Makefile does
    .venv-bench/bin/pip install -e . requests gguf       # requests: all fastchat imports beyond our deps;
    .venv-bench/bin/pip install --no-deps fschat==0.2.36 # gguf: to convert the vocab (see below)

(`--no-deps` because fschat's own requirements are for serving, not `preprocess`. Add
`.venv-bench/` to .gitignore.)

Run from the project venv, the script re-executes itself with `.venv-bench/bin/python` when
`fastchat` is not importable here, so both pipelines run in one process, one after the other, on
the same data and the same tokenizer object, with the same thread settings (`--threads`, default
1: RAYON_NUM_THREADS for the Rust tokenizer and torch's intra-op threads). Without the bench venv it
prints how to make one and measures llama-sft alone. The repository's `src/` goes first on
sys.path, so the bench venv always measures this checkout's code.

Both sides start from the same ShareGPT JSON file (generated here, seeded) and end with ids and
labels for every conversation: ours is `load_conversations` then `encode_with_report` (validation,
render, one batched tokenization with offsets, span labels, truncation report); FastChat's is
`json.load` then `fastchat.train.train.preprocess` (what its `SupervisedDataset` does: render,
batched tokenization padded to model_max_length, then two more tokenizer calls per round to find
the masks). The headline ratio is file -> rows; the stage-only ratio (encode vs preprocess) is
reported too. With one thread (the default) throughput is counted in conversations per CPU second
of the process, which other work on a shared machine barely disturbs and which equals wall time on
an idle core; with more threads, in wall time. Both clocks are recorded.

FastChat shims, applied in this process only:
  * `tokenizer.legacy = True`: fastchat 0.2.36 reads `tokenizer.legacy`, an attribute of
    transformers 4's LlamaTokenizer that transformers 5's tokenizers-backed classes no longer
    have (AttributeError). True is the truthful value: `prepare_tokenizer` gives the vocab Meta's
    "legacy" normalization (a "▁" after special tokens), which is what FastChat's offsets assume.
  * `fastchat.train.train.rank0_print` is replaced by a function that records its messages: the
    original prints nothing unless `local_rank == 0` (set only by FastChat's own `train()`), and we
    need its "tokenization mismatch" warnings counted, not lost.
FastChat's `train()` asks for `use_fast=False`, which transformers 5 ignores (AutoTokenizer always
returns the Rust-backed tokenizer), so handing FastChat our tokenizer object is also what its own
recipe gets on transformers 5. Under transformers 4 it would get the slower SentencePiece one.

Tokenizer: the real LLaMA-1/2 32k SentencePiece vocabulary, read from llama.cpp's
`ggml-vocab-llama-spm.gguf` (shipped in the llama-cpp-python sdist) and cached as an HF tokenizer
under ~/.cache/llama-sft/vocab/llama-spm-hf; without it, the tiny test tokenizer, clearly noted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCH_VENV = REPO / ".venv-bench"
RESULTS = REPO / "benchmarks" / "results"
REEXEC_FLAG = "LLAMA_SFT_BENCH_REEXEC"
VOCAB_ROOT = Path(os.environ.get("LLAMA_SFT_VOCAB_CACHE") or Path.home() / ".cache" / "llama-sft" / "vocab")
VOCAB_CACHE = VOCAB_ROOT / "llama-spm-hf"
GGUF_NAME = "ggml-vocab-llama-spm.gguf"
# Where the GGUF may already be: the test suite's download cache, an extracted sdist.
GGUF_PLACES = [
    VOCAB_ROOT / "llama.cpp-models",
    Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models"),
]
IGNORE = -100


# --------------------------------------------------------------------------- data


WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out up about what into "
    "time some could them than other new these two may first then do any like my now over such our man me even "
    "most made after also did many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men work long get here between "
    "both life being under never day same another know while last might us great old year off come since against go "
    "came right used take three model data training function value return error example system memory tokenizer "
    "python variable network learning question answer because however therefore approximately implementation "
    "configuration performance understanding particularly recommendation"
).split()
NON_ENGLISH = "über café naïve résumé niño 你好 世界 こんにちは 데이터 модель обучение".split()
CODE = [
    "def {w}(x, y=None):",
    "    return {w}_{w2}(x) + {n}",
    "for i in range({n}):",
    "    result[i] = {w}[i] * {n}",
    "import {w}",
    'print(f"{{{w}}} = {n}")',
    "if {w} is None:",
    "    raise ValueError('{w} {w2}')",
]


def _words(rng: random.Random, n: int) -> str:
    """About n words of chat-like prose: Zipf-ish words, sentences, numbers, lists, code, other scripts."""
    out, sentence = [], []
    weights = [1 / (k + 1) ** 0.9 for k in range(len(WORDS))]
    words = rng.choices(WORDS, weights, k=n)
    for w in words:
        r = rng.random()
        if r < 0.03:
            w = str(rng.choice([rng.randint(0, 100), rng.randint(1900, 2030), round(rng.random() * 100, 2)]))
        elif r < 0.035:
            w = rng.choice(NON_ENGLISH)
        sentence.append(w)
        if len(sentence) >= rng.randint(6, 24):
            text = " ".join(sentence)
            out.append(text[0].upper() + text[1:] + rng.choice(".....?!:"))
            sentence = []
            r = rng.random()
            if r < 0.08:
                out.append("\n\n")
            elif r < 0.12:
                out.append(f"\n{rng.choice(['-', '*', '1.', '2.'])}")
            elif r < 0.13:
                lines = [
                    rng.choice(CODE).format(w=rng.choice(WORDS), w2=rng.choice(WORDS), n=rng.randint(0, 99))
                    for _ in range(rng.randint(2, 8))
                ]
                out.append("\n```python\n" + "\n".join(lines) + "\n```\n")
    if sentence:
        out.append(" ".join(sentence) + ".")
    return " ".join(out).replace(" \n", "\n").replace("\n ", "\n").strip()


def _length(rng: random.Random, median: float, sigma: float) -> int:
    return max(2, min(1500, int(rng.lognormvariate(math.log(median), sigma))))


def _quirks(rng: random.Random, text: str) -> str:
    """What scraped chats carry and clean prose lacks: edge whitespace, emoji, a reply opening with code."""
    r = rng.random()
    if r < 0.04:
        return "\n\n" + text
    if r < 0.06:
        return text + rng.choice([" ", "\n", "  "])
    if r < 0.07:
        return "🙂 " + text
    if r < 0.08:
        return "```\n" + text + "\n```"
    return text


def sharegpt_mix(n: int, seed: int = 0) -> list[dict]:
    """n ShareGPT records: 1-10 rounds (long-tailed), turns of 2 to 1500 words (log-normal)."""
    rng = random.Random(seed)
    rounds_weights = [1 / k**1.3 for k in range(1, 11)]
    records = []
    for i in range(n):
        rounds = rng.choices(range(1, 11), rounds_weights)[0]
        turns = []
        for _ in range(rounds):
            turns.append({"from": "human", "value": _quirks(rng, _words(rng, _length(rng, 18, 1.1)))})
            turns.append({"from": "gpt", "value": _quirks(rng, _words(rng, _length(rng, 110, 0.9)))})
        records.append({"id": f"bench-{i}", "conversations": turns})
    return records


# --------------------------------------------------------------------------- tokenizer


def load_llama_vocab(gguf: str | None):
    """(tokenizer, description): LLaMA's 32k SentencePiece vocab, cached; else the tiny test tokenizer."""
    from transformers import AutoTokenizer

    from llama_sft.data.tokenizer import prepare_tokenizer

    if (VOCAB_CACHE / "tokenizer.json").exists():
        return prepare_tokenizer(
            AutoTokenizer.from_pretrained(str(VOCAB_CACHE))
        ), f"LLaMA-2 32k SentencePiece ({VOCAB_CACHE})"
    candidates = [Path(gguf)] if gguf else [p / GGUF_NAME for p in GGUF_PLACES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        print(f"converting {found} (once, ~20 s)...", file=sys.stderr)
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(found.parent), gguf_file=found.name))
        tokenizer.save_pretrained(str(VOCAB_CACHE))
        return tokenizer, f"LLaMA-2 32k SentencePiece (from {found})"
    from llama_sft.tiny import build_tokenizer

    print(
        f"NOTE: {GGUF_NAME} not found in {[str(p.parent) for p in candidates]}. It ships in the llama-cpp-python "
        "sdist (`pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`, then "
        "vendor/llama.cpp/models/ inside it); pass it with --gguf PATH. Using the tiny test tokenizer "
        "instead: its throughput is NOT representative of LLaMA's 32k vocabulary.",
        file=sys.stderr,
    )
    return build_tokenizer(), "tiny test BPE (llama_sft.tiny; NOT LLaMA's vocab)"


# --------------------------------------------------------------------------- the two pipelines


def ours(tokenizer, max_length: int):
    from llama_sft.data.dataset import encode_with_report
    from llama_sft.data.issues import ValidationReport
    from llama_sft.data.templates import get_template
    from llama_sft.data.validate import load_conversations

    template = get_template("vicuna_v1.1")

    def load(path):
        return load_conversations(path, "sharegpt", template_name="vicuna_v1.1")[0]

    def encode(conversations):
        return encode_with_report(
            conversations, template, tokenizer, max_length, "train_on_assistant", ValidationReport()
        )

    return load, encode


def fastchat(tokenizer):
    """FastChat's load and preprocess, with the two shims the module docstring explains."""
    import fastchat.train.train as fc_train

    warnings: list[str] = []
    fc_train.rank0_print = lambda *args: warnings.append(" ".join(map(str, args)))
    try:
        tokenizer.legacy  # noqa: B018
    except AttributeError:
        tokenizer.legacy = True

    def load(path):
        with open(path) as handle:
            return [example["conversations"] for example in json.load(handle)]

    def encode(sources):
        return fc_train.preprocess(sources, tokenizer)

    return load, encode, warnings


# The floor: the one thing every pipeline must do, a batched tokenizer call on the rendered texts
# returning ids (transformers' call, as any SFT pipeline makes it). Below it, for reference, the Rust
# tokenizer alone with no offsets tracked and no Python lists built per token by transformers.
FLOOR = "floor: tokenizer(texts), ids only"
RUST_FLOOR = "floor (Rust alone): encode_batch_fast, no offsets"
# The floor as timed until 2026-11-30: the call's whole output (ids and the tokenizer's Encodings) was
# returned, so freeing the Encodings fell after the clock stopped, while every pipeline, ours and
# FastChat's, frees them inside its own timing (2-3% of the call). FLOOR keeps only the ids, as a
# pipeline does; this one is kept for comparison with the earlier results.
FLOOR_HELD = "floor as timed before: tokenizer(texts), Encodings freed after the clock"
FLOORS = (FLOOR, FLOOR_HELD, RUST_FLOOR)
LABELS = "labels (span boundaries looked up in the Encodings)"


def our_stages(tokenizer, conversations):
    """Our encode split into its stages, each timed alone on the same input: where the time goes.

    Our tokenize stage is the floor's own call (ids only; labels read the Encodings it returns), so
    the floor's timing stands for it in the stages table."""
    from llama_sft.data.encode import labels_from_encoding, offsets_in_order, supervised_spans
    from llama_sft.data.templates import SpecialText, get_template

    assert offsets_in_order(tokenizer), "this vocab would take the general path; the stages below do not"
    template, special = get_template("vicuna_v1.1"), SpecialText.from_tokenizer(tokenizer)
    rendered = [template.render(c.messages, special=special) for c in conversations]
    texts = [r.text for r in rendered]
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)
    triples = list(zip(rendered, enc["input_ids"], enc.encodings, strict=True))
    backend = tokenizer.backend_tokenizer
    return {
        FLOOR: lambda: tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"],
        FLOOR_HELD: lambda: tokenizer(texts, add_special_tokens=False, return_attention_mask=False),
        RUST_FLOOR: lambda: len(backend.encode_batch_fast(texts, add_special_tokens=False)),
        "render (template -> text and spans)": lambda: [
            template.render(c.messages, special=special) for c in conversations
        ],
        LABELS: lambda: [
            labels_from_encoding(ids, e, supervised_spans(r, "train_on_assistant"), len(r.text))
            for r, ids, e in triples
        ],
    }


timed = common.timed


def summarize(n: int, samples: list[tuple[float, float]]) -> dict:
    out = {}
    for k, clock in enumerate(("wall", "cpu")):
        seconds = [x[k] for x in samples]
        median = statistics.median(seconds)
        out |= {f"{clock}_median_s": round(median, 4), f"{clock}_conv_per_s": round(n / median, 1)}
        out[f"{clock}_s"] = [round(x, 4) for x in seconds]
    return out


# --------------------------------------------------------------------------- agreement


def agreement(records, rows, fc_out, tokenizer, max_length: int) -> dict:
    """Compare our ids/labels with FastChat's (padding removed) where FastChat did not give up."""
    by_id = {r["id"]: r for r in rows}
    counts, reasons, examples = Counter(), Counter(), {}
    fc_ids, fc_labels, fc_mask = fc_out["input_ids"], fc_out["labels"], fc_out["attention_mask"]
    for i, rec in enumerate(records):
        n = int(fc_mask[i].sum())
        ids, labels = fc_ids[i, :n].tolist(), fc_labels[i, :n].tolist()
        row = by_id.get(rec["id"])
        if all(x == IGNORE for x in labels):
            if row is None:
                counts["both drop it: no reply token within max_length"] += 1
            elif n < max_length:
                counts["excluded: FastChat 'tokenization mismatch' (masks it all)"] += 1
            else:
                counts["FastChat masks all of a truncated conversation, we keep it"] += 1
            continue
        if row is None:
            counts["we drop it (no reply token), FastChat keeps it"] += 1
        elif row["input_ids"] != ids:
            counts["input_ids differ"] += 1
            k = next(
                (k for k, (a, b) in enumerate(zip(row["input_ids"], ids, strict=False)) if a != b),
                min(len(ids), len(row["input_ids"])),
            )
            examples.setdefault("input_ids differ", f"{rec['id']} first at token {k}")
        elif row["labels"] == labels:
            counts["identical input_ids and labels"] += 1
        else:
            counts["same input_ids, labels differ"] += 1
            pieces = tokenizer.convert_ids_to_tokens(ids)
            for k, (a, b) in enumerate(zip(row["labels"], labels, strict=True)):
                if a != b:
                    who = "we train, FastChat masks" if a != IGNORE else "FastChat trains, we mask"
                    key = f"{who}: {pieces[k]!r} after {pieces[max(k - 1, 0)]!r}"
                    reasons[key] += 1
                    examples.setdefault(key, f"{rec['id']} token {k}")
    compared = sum(v for k, v in counts.items() if not k.startswith(("excluded", "both drop")))
    return {
        "compared": compared,
        "counts": dict(counts),
        "label_differences": dict(reasons.most_common(12)),
        "examples": examples,
    }


# --------------------------------------------------------------------------- report


def timing_table(result: dict) -> list[str]:
    t, clock = result["timings"], result["clock"]
    rows = [
        ("file_to_rows", "file -> ids and labels (headline)"),
        ("encode", "encode_with_report vs preprocess"),
        ("load", "load: ours validates, FastChat json.load"),
    ]
    per = "conversations per CPU second" if clock == "cpu" else "conversations per second (wall)"
    lines = [f"| stage ({per}) | llama-sft | FastChat | ratio |", "|---|---:|---:|---:|"]
    for stage, label in rows:
        ours_cps, fc_cps = (
            t["ours"][stage][f"{clock}_conv_per_s"],
            t.get("fastchat", {}).get(stage, {}).get(f"{clock}_conv_per_s"),
        )
        fc_txt, ratio = (f"{fc_cps:,.0f}", f"{ours_cps / fc_cps:.2f}") if fc_cps else ("n/a", "n/a")
        lines.append(f"| {label} | {ours_cps:,.0f} | {fc_txt} | {ratio} |")
    for name in FLOORS:
        floor = t["ours_stages"][name][f"{clock}_conv_per_s"]
        fc_cps = t.get("fastchat", {}).get("file_to_rows", {}).get(f"{clock}_conv_per_s")
        ours_share = t["ours"]["file_to_rows"][f"{clock}_conv_per_s"] / floor
        fc_txt = f"{fc_cps / floor:.2f} of it" if fc_cps else "n/a"
        lines.append(f"| {name} | {floor:,.0f} (ours: {ours_share:.2f} of it) | {fc_txt} | |")
    return lines


def floor_summary(result: dict) -> dict:
    """Our file -> rows time over the floor's (goal: at most 1.15), and FastChat's, per CPU second.

    The headline is the median of the per-repeat ratios (the floor is timed just before ours in each
    repeat); the ratio of the two medians is kept beside it."""
    t, clock = result["timings"], result["clock"]
    out = {}
    for name in FLOORS:
        floor = t["ours_stages"][name]
        out[name] = {}
        for who in ("ours", "fastchat"):
            if who not in t:
                continue
            rows = t[who]["file_to_rows"]
            paired = [a / b for a, b in zip(rows[f"{clock}_s"], floor[f"{clock}_s"], strict=True)]
            out[name][f"{who}_time_over_floor"] = round(statistics.median(paired), 3)
            out[name][f"{who}_time_over_floor_per_repeat"] = [round(x, 3) for x in paired]
            out[name][f"{who}_time_over_floor_of_medians"] = round(
                rows[f"{clock}_median_s"] / floor[f"{clock}_median_s"], 3
            )
    return out


def stages_table(result: dict) -> list[str]:
    t, key = result["timings"], f"{result['clock']}_median_s"
    total = t["ours"]["file_to_rows"][key]
    parts = {"load_conversations (read JSON, validate)": t["ours"]["load"][key]}
    stages = {k: v for k, v in t["ours_stages"].items() if not k.startswith("floor")}
    stages["tokenize (the floor's call)"] = t["ours_stages"][FLOOR]
    parts |= {k: v[key] for k, v in stages.items()}
    rest = t["ours"]["encode"][key] - sum(v[key] for v in stages.values())
    parts["rest of encode_with_report (Encoded, truncation, report, rows)"] = rest
    lines = ["| our stage | seconds | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {v / total:.0%} |" for k, v in parts.items()]
    return lines


def write_markdown(result: dict, path: Path) -> None:
    m, d, fl = result["machine"], result["data"], result["floor"][FLOOR]
    lines = [
        "# Preprocessing throughput: llama-sft vs a bare tokenizer pass and FastChat",
        "",
        *common.header_lines(m, result["command"]),
        f"One process, {result['threads']} thread(s) for everything (RAYON_NUM_THREADS and torch); "
        f"llama_sft imported from `{result.get('llama_sft_source')}`.",
        "",
        f"Data: {d['conversations']} generated ShareGPT-like conversations (seed {d['seed']}); rounds "
        f"{d['rounds']}; tokens per conversation p50 {d['tokens_p50']}, p90 {d['tokens_p90']}, "
        f"{d['truncated']} truncated at model_max_length {d['max_length']}. Tokenizer: {result['tokenizer']}.",
        "",
        f"## {result['threads']} thread(s)",
        "",
        *timing_table(result),
        "",
        f"Time over the floor (goal: at most 1.15): llama-sft **{fl['ours_time_over_floor']:.2f}x**"
        + (f", FastChat {fl['fastchat_time_over_floor']:.2f}x" if "fastchat_time_over_floor" in fl else "")
        + f" (median of the per-repeat ratios {fl['ours_time_over_floor_per_repeat']}, the floor timed just "
        f"before ours in each repeat; ratio of the medians {fl['ours_time_over_floor_of_medians']:.2f}x). "
        f"Against the floor as timed before (its Encodings freed after the clock, which no pipeline gets): "
        f"{result['floor'][FLOOR_HELD]['ours_time_over_floor']:.2f}x.",
        "",
        f"Median of {result['repeats']} interleaved repeats; every timing, wall and CPU, is in preprocess.json."
        + (
            f" By wall time on this shared machine the ratios were {result['ratio']['wall']['file_to_rows']:.2f} "
            f"(file -> rows) and {result['ratio']['wall']['encode']:.2f} (encode)."
            if result.get("ratio") and result["clock"] == "cpu"
            else ""
        ),
        "",
    ]
    lines += ["Where our time goes (medians, same run):", "", *stages_table(result), ""]
    for extra in result.get("more_threads", []):
        em = extra["machine"]
        lines += [
            f"## {extra['threads']} threads (same data, a fresh process)",
            "",
            *timing_table(extra),
            "",
            f"Wall time, 1-minute load average {em['load_average_1m_at_start']} at the start and "
            f"{em['load_average_1m_at_end']} at the end: where that exceeds the free cores, the extra thread "
            "had no core to run on and this table says little.",
            "",
        ]
    if result.get("agreement"):
        a = result["agreement"]
        lines += [
            "## Agreement with FastChat",
            "",
            f"Compared: {a['compared']} of {d['conversations']}.",
            "",
            "| outcome | conversations |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v} |" for k, v in sorted(a["counts"].items())]
        lines += [
            "",
            f"FastChat's own 'tokenization mismatch' warnings in one run: {result['fastchat_mismatch_warnings']}.",
            "",
        ]
        if a["label_differences"]:
            lines += ["| label difference | tokens |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in a["label_differences"].items()]
            lines.append("")
    lines += ["## FastChat shims (in the benchmark process only)", ""] + [
        f"- {s}" for s in result["shims"] or ["none"]
    ]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="small run (well under 3 minutes on CPU); writes no results"
    )
    p.add_argument(
        "--conversations",
        type=int,
        default=None,
        help="how many conversations (default 800 quick, 4000 full)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per pipeline, interleaved (default 2 quick, 5 full)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="threads for the Rust tokenizer and torch, the same for both"
    )
    p.add_argument("--max-length", type=int, default=2048, help="model_max_length for both pipelines")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument(
        "--gguf", default=None, help=f"path to {GGUF_NAME} if the converted vocab is not cached yet"
    )
    p.add_argument(
        "--save",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write benchmarks/results/preprocess.{json,md} (default: on for full runs, off for --quick)",
    )
    p.add_argument(
        "--more-threads",
        action="store_true",
        help="also repeat the timings with every usable core in a fresh process (wall time: needs idle cores)",
    )
    p.add_argument(
        "--allow-dirty", action="store_true", help="save from a dirty tree, flagged in the results"
    )
    p.add_argument("--json-out", default=None, help="also write the result JSON here")
    p.add_argument(
        "--profile", action="store_true", help="cProfile our encode stage once and print the top functions"
    )
    return p.parse_args(argv)


def maybe_reexec() -> None:
    """Re-run this script under the bench venv's python when fastchat is missing here."""
    common.reexec_in_bench_venv(("fastchat",))


def measure(args, n: int, repeats: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # "sequence longer than model_max_length": expected here
    has_fastchat = importlib.util.find_spec("fastchat") is not None
    if not has_fastchat:
        print(common.bench_venv_help("fastchat") + "\nMeasuring llama-sft alone.", file=sys.stderr)
    tokenizer, tok_desc = load_llama_vocab(args.gguf)
    tokenizer.pad_token = tokenizer.unk_token  # as FastChat's train() does; our labels never look at padding
    tokenizer.model_max_length = args.max_length
    tokenizer.padding_side = "right"
    records = sharegpt_mix(n, args.seed)
    work = Path(tempfile.mkdtemp(prefix="llama-sft-bench-"))
    data_path, warm_path = work / "sharegpt.json", work / "warm.json"
    data_path.write_text(json.dumps(records))
    warm_path.write_text(json.dumps(records[:20]))

    pipelines = {"ours": ours(tokenizer, args.max_length)}
    shims, fc_warnings = [], []
    if has_fastchat:
        fc_load, fc_encode, fc_warnings = fastchat(tokenizer)
        pipelines["fastchat"] = (fc_load, fc_encode)
        shims = [
            "`tokenizer.legacy = True`: fastchat 0.2.36 reads this attribute of transformers 4's LlamaTokenizer, "
            "which transformers 5's tokenizer classes no longer have; True describes the vocab as prepared "
            "(Meta's normalization, a '▁' after special tokens)",
            "`fastchat.train.train.rank0_print` records its messages instead of printing only on local_rank 0, "
            "so 'tokenization mismatch' warnings are counted",
        ]
    for load, encode in pipelines.values():  # warm-up: imports and first calls are not timed
        encode(load(warm_path))

    times = {name: {"load": [], "encode": []} for name in pipelines}
    outputs, mismatch_warnings = {}, 0
    stages = our_stages(tokenizer, pipelines["ours"][0](data_path))
    stage_times = {k: [] for k in stages}
    for r in range(repeats):
        # The floor just before ours in every repeat, so each repeat gives a ratio of neighbours
        # (a shared machine's load drifts between repeats more than within one).
        stage_times[FLOOR].append(timed(stages[FLOOR])[1:])
        for name, (load, encode) in pipelines.items():
            before = len(fc_warnings)
            loaded, *t_load = timed(load, data_path)
            outputs[name], *t_enc = timed(encode, loaded)
            mismatch_warnings = sum("tokenization mismatch" in w for w in fc_warnings[before:])
            times[name]["load"].append(t_load)
            times[name]["encode"].append(t_enc)
            del loaded
            print(
                f"[{args.threads} thread(s)] repeat {r + 1}/{repeats} {name:8s} load {t_load[0]:7.3f}s "
                f"encode {t_enc[0]:7.3f}s wall, {t_enc[1]:7.3f}s CPU",
                file=sys.stderr,
                flush=True,
            )
        for k, fn in stages.items():
            if k != FLOOR:
                stage_times[k].append(timed(fn)[1:])

    timings = {"ours_stages": {k: summarize(n, v) for k, v in stage_times.items()}}
    for name, t in times.items():
        timings[name] = {"load": summarize(n, t["load"]), "encode": summarize(n, t["encode"])}
        both = [(a[0] + b[0], a[1] + b[1]) for a, b in zip(t["load"], t["encode"], strict=True)]
        timings[name]["file_to_rows"] = summarize(n, both)
    rows, stats = outputs["ours"]
    lengths = sorted(len(r["input_ids"]) for r in rows)
    rounds = Counter(len(r["conversations"]) // 2 for r in records)
    data = {
        "conversations": n,
        "seed": args.seed,
        "max_length": args.max_length,
        "rounds": {k: rounds[k] for k in sorted(rounds)},
        "tokens_p50": lengths[len(lengths) // 2],
        "tokens_p90": lengths[int(len(lengths) * 0.9)],
        "tokens_total": stats.tokens,
        "truncated": stats.truncated,
        "kept_by_us": len(rows),
    }
    import llama_sft

    result = {
        # Which checkout's code ran (the bench venv's editable install may point at another one).
        "llama_sft_source": str(Path(llama_sft.__file__).resolve().parent),
        "quick": args.quick,
        "threads": args.threads,
        # One thread: CPU time, which other processes on a shared machine barely disturb (it is the
        # wall time of an idle core). More threads: wall time, as CPU time adds the threads up.
        "clock": "cpu" if args.threads == 1 else "wall",
        "repeats": repeats,
        "tokenizer": tok_desc,
        "machine": common.provenance(),
        "data": data,
        "timings": timings,
        "shims": shims,
    }
    result["floor"] = floor_summary(result)
    if has_fastchat:
        result["agreement"] = agreement(records, rows, outputs["fastchat"], tokenizer, args.max_length)
        result["fastchat_mismatch_warnings"] = mismatch_warnings
        result["ratio"] = {
            clock: {
                s: round(
                    timings["ours"][s][f"{clock}_conv_per_s"] / timings["fastchat"][s][f"{clock}_conv_per_s"],
                    3,
                )
                for s in ("file_to_rows", "encode", "load")
            }
            for clock in ("cpu", "wall")
        }
    if args.profile:
        import cProfile
        import pstats

        conversations = pipelines["ours"][0](data_path)
        profiler = cProfile.Profile()
        profiler.runcall(pipelines["ours"][1], conversations)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return result


def more_threads(args, n: int, repeats: int, threads: int) -> dict:
    """The same measurement with more threads: a fresh process, as Rayon sizes its pool once."""
    out = Path(tempfile.mkdtemp(prefix="llama-sft-bench-")) / "threads.json"
    flags = {
        "--threads": threads,
        "--conversations": n,
        "--repeats": repeats,
        "--seed": args.seed,
        "--max-length": args.max_length,
        "--json-out": out,
    }
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--no-save",
        *(str(x) for kv in flags.items() for x in kv),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, REEXEC_FLAG: "1"})
    return json.loads(out.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    maybe_reexec()
    # Before anything imports tokenizers: the same Rayon pool size for both pipelines.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "src"))
    n = args.conversations or (800 if args.quick else 4000)
    repeats = args.repeats or (2 if args.quick else 5)
    save = (not args.quick) if args.save is None else args.save
    if save:
        common.require_clean(args.allow_dirty)

    result = measure(args, n, repeats)
    result["command"] = "python benchmarks/preprocess.py" + (" --quick" if args.quick else "")
    result["machine"] = common.finish(result["machine"])
    cores = result["machine"]["cores_usable"] or 1
    if args.more_threads and cores > args.threads:
        result["more_threads"] = [more_threads(args, n, repeats, cores)]
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "preprocess.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        write_markdown(result, RESULTS / "preprocess.md")
        print(f"wrote {RESULTS / 'preprocess.json'} and {RESULTS / 'preprocess.md'}", file=sys.stderr)

    print("\n".join(timing_table(result)))
    fl = result["floor"][FLOOR]
    print(
        f"our preprocess takes {fl['ours_time_over_floor']:.2f}x the time of a bare tokenizer pass (goal <= 1.15)"
        + (f"; FastChat's {fl['fastchat_time_over_floor']:.2f}x" if "fastchat_time_over_floor" in fl else "")
    )
    if "agreement" in result:
        clock, ratio = result["clock"], result["ratio"]
        other = "wall" if clock == "cpu" else "cpu"
        print(f"agreement with FastChat: {json.dumps(result['agreement']['counts'])}")
        print(
            f"ratios by {other} time: file->rows {ratio[other]['file_to_rows']:.2f}, encode {ratio[other]['encode']:.2f}"
        )
        print(f"encode-stage ratio vs FastChat: {ratio[clock]['encode']:.2f}")
        print(f"conversations/s ratio vs FastChat: {ratio[clock]['file_to_rows']:.2f}")
    else:
        print("conversations/s ratio vs FastChat: n/a (fastchat not installed; see the note above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
