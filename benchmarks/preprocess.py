"""Preprocessing throughput: llama-sft's encoder against FastChat's `preprocess`, same data and tokenizer.

    python benchmarks/preprocess.py --quick     # about a minute; last line is the ratio
    python benchmarks/preprocess.py             # full run; writes benchmarks/results/preprocess.{json,md}

FastChat (PyPI `fschat`) is never a dependency of llama-sft. It lives in a separate venv,
`.venv-bench/` at the repository root, made once with:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0            # CPU wheel first, as the Makefile does
    .venv-bench/bin/pip install -e . requests            # our deps; requests is all fastchat imports beyond them
    .venv-bench/bin/pip install --no-deps fschat==0.2.36 # its own pins are for serving, not preprocess

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
reported too.

FastChat shims, applied in this process only:
  * `tokenizer.legacy = True`: fastchat 0.2.36 reads `tokenizer.legacy`, an attribute of
    transformers 4's LlamaTokenizer that transformers 5's tokenizers-backed classes no longer
    have (AttributeError). True is the truthful value: `prepare_tokenizer` gives the vocab Meta's
    "legacy" normalization (a "▁" after special tokens), which is what FastChat's offsets assume.
  * `fastchat.train.train.rank0_print` is replaced by a function that records its messages: the
    original prints nothing unless `local_rank == 0` (set only by FastChat's own `train()`), and we
    need its "tokenization mismatch" warnings counted, not lost.
FastChat's `train()` loads LLaMA's slow SentencePiece tokenizer (`use_fast=False`); we hand it the
same fast tokenizer we use, which only makes FastChat faster than it is in its own recipe.

Tokenizer: the real LLaMA-1/2 32k SentencePiece vocabulary, read from llama.cpp's
`ggml-vocab-llama-spm.gguf` (shipped in the llama-cpp-python sdist) and cached as an HF tokenizer
under ~/.cache/llama-sft/vocab/llama-spm-hf; without it, the tiny test tokenizer, clearly noted.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_VENV = REPO / ".venv-bench"
RESULTS = REPO / "benchmarks" / "results"
REEXEC_FLAG = "LLAMA_SFT_BENCH_REEXEC"
VOCAB_CACHE = Path.home() / ".cache" / "llama-sft" / "vocab" / "llama-spm-hf"
GGUF_NAME = "ggml-vocab-llama-spm.gguf"
GGUF_PLACES = [Path("/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models")]
IGNORE = -100
BENCH_ENV_HELP = f"""FastChat is not importable here and {BENCH_VENV} does not exist; measuring llama-sft alone.
To compare with FastChat, make the bench venv once (from {REPO}):
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e . requests
    .venv-bench/bin/pip install --no-deps fschat==0.2.36"""


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
                lines = [rng.choice(CODE).format(w=rng.choice(WORDS), w2=rng.choice(WORDS), n=rng.randint(0, 99))
                         for _ in range(rng.randint(2, 8))]
                out.append("\n```python\n" + "\n".join(lines) + "\n```\n")
    if sentence:
        out.append(" ".join(sentence) + ".")
    return " ".join(out).replace(" \n", "\n").replace("\n ", "\n").strip()


def _length(rng: random.Random, median: float, sigma: float) -> int:
    return max(2, min(1500, int(rng.lognormvariate(math.log(median), sigma))))


def sharegpt_mix(n: int, seed: int = 0) -> list[dict]:
    """n ShareGPT records: 1-10 rounds (long-tailed), turns of 2 to 1500 words (log-normal)."""
    rng = random.Random(seed)
    rounds_weights = [1 / k**1.3 for k in range(1, 11)]
    records = []
    for i in range(n):
        rounds = rng.choices(range(1, 11), rounds_weights)[0]
        turns = []
        for _ in range(rounds):
            turns.append({"from": "human", "value": _words(rng, _length(rng, 18, 1.1))})
            turns.append({"from": "gpt", "value": _words(rng, _length(rng, 110, 0.9))})
        records.append({"id": f"bench-{i}", "conversations": turns})
    return records


# --------------------------------------------------------------------------- tokenizer


def load_llama_vocab(gguf: str | None):
    """(tokenizer, description): LLaMA's 32k SentencePiece vocab, cached; else the tiny test tokenizer."""
    from transformers import AutoTokenizer

    from llama_sft.data.tokenizer import prepare_tokenizer

    if (VOCAB_CACHE / "tokenizer.json").exists():
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(VOCAB_CACHE))), f"LLaMA-2 32k SentencePiece ({VOCAB_CACHE})"
    candidates = [Path(gguf)] if gguf else [p / GGUF_NAME for p in GGUF_PLACES]
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        print(f"converting {found} (once, ~20 s)...", file=sys.stderr)
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(found.parent), gguf_file=found.name))
        tokenizer.save_pretrained(str(VOCAB_CACHE))
        return tokenizer, f"LLaMA-2 32k SentencePiece (from {found})"
    from llama_sft.tiny import build_tokenizer

    print(
        f"NOTE: {GGUF_NAME} not found (pass --gguf PATH; it ships in the llama-cpp-python sdist under "
        "vendor/llama.cpp/models/). Using the tiny 856-token test tokenizer: throughput numbers are NOT "
        "representative of LLaMA's vocabulary.",
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
        return encode_with_report(conversations, template, tokenizer, max_length, "train_on_assistant", ValidationReport())

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


def timed(fn, arg):
    gc.collect()
    start = time.perf_counter()
    out = fn(arg)
    return out, time.perf_counter() - start


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
                counts["both_drop_no_reply_in_window"] += 1
            elif n < max_length:
                counts["fastchat_tokenization_mismatch_excluded"] += 1
            else:
                counts["fastchat_all_masked_truncated"] += 1
            continue
        if row is None:
            counts["we_drop_fastchat_keeps"] += 1
            continue
        if row["input_ids"] != ids:
            counts["ids_differ"] += 1
            continue
        if row["labels"] == labels:
            counts["identical"] += 1
            continue
        counts["labels_differ"] += 1
        pieces = tokenizer.convert_ids_to_tokens(ids)
        for k, (a, b) in enumerate(zip(row["labels"], labels)):
            if a != b:
                who = "we train, FastChat masks" if a != IGNORE else "FastChat trains, we mask"
                key = f"{who}: {pieces[k]!r} after {pieces[max(k - 1, 0)]!r}"
                reasons[key] += 1
                examples.setdefault(key, f"{rec['id']} token {k}")
    return {"counts": dict(counts), "label_differences": dict(reasons.most_common(12)), "examples": examples}


# --------------------------------------------------------------------------- report


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "numpy", "fschat", "llama-sft"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": commit,
        "src_modified": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_markdown(result: dict, path: Path) -> None:
    m, d, t = result["machine"], result["data"], result["timings"]
    lines = [
        "# Preprocessing throughput: llama-sft vs FastChat",
        "",
        f"`python benchmarks/preprocess.py` on {m['date']}, {m['cpu']}, {m['cores_usable']} usable cores, "
        f"{result['threads']} thread(s) for both (RAYON_NUM_THREADS, torch), one process.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}; commit {m['git_commit']}"
        + (" with local changes under src/" if m["src_modified"] else "") + ".",
        "",
        f"Data: {d['conversations']} ShareGPT-like conversations (seed {d['seed']}), rounds {d['rounds']}, "
        f"tokens per conversation p50 {d['tokens_p50']}, p90 {d['tokens_p90']}, max {d['tokens_max']}; "
        f"{d['over_max_length']} exceed model_max_length {d['max_length']}. Tokenizer: {result['tokenizer']}.",
        "",
        "| stage | llama-sft conv/s | FastChat conv/s | ratio |",
        "|---|---:|---:|---:|",
    ]
    for stage, label in (("file_to_rows", "file -> ids and labels (headline)"), ("encode", "encode only vs `preprocess`"),
                         ("load", "load (ours validates; FastChat `json.load`)")):
        ours_cps, fc_cps = t["ours"][stage]["conv_per_s"], (t.get("fastchat") or {}).get(stage, {}).get("conv_per_s")
        ratio = f"{ours_cps / fc_cps:.2f}" if fc_cps else "n/a"
        lines.append(f"| {label} | {ours_cps:,.0f} | {f'{fc_cps:,.0f}' if fc_cps else 'n/a'} | {ratio} |")
    lines += ["", f"Median of {result['repeats']} interleaved repeats; every timing (seconds) is in preprocess.json.", ""]
    if result.get("agreement"):
        a = result["agreement"]
        lines += ["## Agreement with FastChat", "", "| outcome | conversations |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(a["counts"].items())]
        lines += ["", f"FastChat's own warnings: {result['fastchat_warnings']} 'tokenization mismatch'.", ""]
        if a["label_differences"]:
            lines += ["Label differences, by token:", "", "| difference | tokens |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in a["label_differences"].items()]
            lines.append("")
    lines += [f"Shims applied to FastChat: {'; '.join(result['shims']) or 'none'}.", ""]
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run (well under 3 minutes on CPU); writes no results")
    p.add_argument("--conversations", type=int, default=None, help="how many conversations (default 600 quick, 4000 full)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per pipeline, interleaved (default 2 quick, 5 full)")
    p.add_argument("--threads", type=int, default=1, help="threads for the Rust tokenizer and torch, same for both")
    p.add_argument("--max-length", type=int, default=2048, help="model_max_length for both pipelines")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--gguf", default=None, help=f"path to {GGUF_NAME} if it is not cached yet")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=None,
                   help="write benchmarks/results/preprocess.{json,md} (default: on for full runs, off for --quick)")
    p.add_argument("--profile", action="store_true", help="also cProfile our encode stage and print the top functions")
    return p.parse_args(argv)


def maybe_reexec() -> None:
    """Re-run this script under the bench venv's python when fastchat is missing here."""
    if importlib.util.find_spec("fastchat") is not None or os.environ.get(REEXEC_FLAG):
        return
    python = BENCH_VENV / "bin" / "python"
    if python.exists():
        print(f"fastchat not importable here; re-running under {python}", file=sys.stderr)
        sys.stdout.flush()
        os.execve(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]], {**os.environ, REEXEC_FLAG: "1"})


def main(argv=None) -> int:
    args = parse_args(argv)
    maybe_reexec()
    # Before anything imports tokenizers or torch: same thread pool sizes for both pipelines.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "src"))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    n = args.conversations or (600 if args.quick else 4000)
    repeats = args.repeats or (2 if args.quick else 5)
    save = (not args.quick) if args.save is None else args.save
    has_fastchat = importlib.util.find_spec("fastchat") is not None
    if not has_fastchat:
        print(BENCH_ENV_HELP, file=sys.stderr)

    tokenizer, tok_desc = load_llama_vocab(args.gguf)
    tokenizer.pad_token = tokenizer.unk_token  # FastChat's train() does this; our labels never look at padding
    tokenizer.model_max_length = args.max_length
    tokenizer.padding_side = "right"
    records = sharegpt_mix(n, args.seed)
    work = Path(tempfile.mkdtemp(prefix="llama-sft-bench-"))
    data_path = work / "sharegpt.json"
    data_path.write_text(json.dumps(records))

    our_load, our_encode = ours(tokenizer, args.max_length)
    pipelines = {"ours": (our_load, our_encode)}
    shims, fc_warnings = [], None
    if has_fastchat:
        fc_load, fc_encode, fc_warnings = fastchat(tokenizer)
        pipelines["fastchat"] = (fc_load, fc_encode)
        shims = ["tokenizer.legacy = True (attribute gone in transformers 5; Meta's legacy normalization is what we use)",
                 "rank0_print records messages (FastChat prints only when local_rank == 0)"]
    # Warm-up on a few records, so one-time costs (imports, first tokenizer call) are not timed.
    warm = work / "warm.json"
    warm.write_text(json.dumps(records[:20]))
    for load, encode in pipelines.values():
        encode(load(warm))

    times = {name: {"load": [], "encode": []} for name in pipelines}
    outputs = {}
    for r in range(repeats):
        for name, (load, encode) in pipelines.items():
            loaded, t_load = timed(load, data_path)
            out, t_enc = timed(encode, loaded)
            times[name]["load"].append(t_load)
            times[name]["encode"].append(t_enc)
            outputs[name] = out
            print(f"repeat {r + 1}/{repeats} {name:8s} load {t_load:7.3f}s  encode {t_enc:7.3f}s", file=sys.stderr)
            del loaded, out

    timings = {}
    for name, t in times.items():
        load_s, enc_s = statistics.median(t["load"]), statistics.median(t["encode"])
        timings[name] = {
            "load": {"median_s": load_s, "conv_per_s": n / load_s, "all_s": t["load"]},
            "encode": {"median_s": enc_s, "conv_per_s": n / enc_s, "all_s": t["encode"]},
            "file_to_rows": {"median_s": load_s + enc_s, "conv_per_s": n / (load_s + enc_s)},
        }

    rows, stats = outputs["ours"]
    lengths = sorted(len(r["input_ids"]) for r in rows)
    rounds = Counter(len(r["conversations"]) // 2 for r in records)
    data = {
        "conversations": n,
        "seed": args.seed,
        "max_length": args.max_length,
        "rounds": {k: rounds[k] for k in sorted(rounds)},
        "tokens_p50": int(np.percentile(lengths, 50)),
        "tokens_p90": int(np.percentile(lengths, 90)),
        "tokens_max": int(lengths[-1]),
        "over_max_length": stats.truncated,
        "rows_kept_by_us": len(rows),
    }
    result = {"quick": args.quick, "threads": args.threads, "repeats": repeats, "tokenizer": tok_desc,
              "machine": machine(), "data": data, "timings": timings, "shims": shims}
    if has_fastchat:
        result["agreement"] = agreement(records, rows, outputs["fastchat"], tokenizer, args.max_length)
        result["fastchat_warnings"] = sum("tokenization mismatch" in w for w in fc_warnings) // repeats
        result["ratio"] = {s: timings["ours"][s]["conv_per_s"] / timings["fastchat"][s]["conv_per_s"]
                           for s in ("file_to_rows", "encode", "load")}

    if args.profile:
        import cProfile
        import pstats

        conversations = our_load(data_path)
        profiler = cProfile.Profile()
        profiler.runcall(our_encode, conversations)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)

    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "preprocess.json").write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result, RESULTS / "preprocess.md")
        print(f"wrote {RESULTS / 'preprocess.json'} and preprocess.md", file=sys.stderr)

    print(json.dumps({"data": data, "agreement": result.get("agreement", {}).get("counts")}))
    for name, t in timings.items():
        print(f"{name:8s} file->rows {t['file_to_rows']['conv_per_s']:9,.0f} conv/s   encode {t['encode']['conv_per_s']:9,.0f} conv/s"
              f"   load {t['load']['conv_per_s']:9,.0f} conv/s")
    if has_fastchat:
        print(f"encode-stage ratio vs FastChat: {result['ratio']['encode']:.2f}")
        print(f"conversations/s ratio vs FastChat: {result['ratio']['file_to_rows']:.2f}")
    else:
        print("conversations/s ratio vs FastChat: n/a (fastchat not installed; see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
