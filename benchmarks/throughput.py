"""Training throughput on CPU: FastChat's pad-to-max batching, ours (padded, packed) and TRL's packing.

    python benchmarks/throughput.py --quick   # model_max_length 2048 only, < 5 min; last line is the ratios
    python benchmarks/throughput.py           # 2048 and 4096; writes benchmarks/results/throughput.{json,md}

One run, one machine, the same conversations and the same random LLaMA for every system:
  fastchat      FastChat's batching reproduced with our pipeline: every row padded to model_max_length
                (`--packing none`), 4 conversations a batch, random order.
  fastchat_own  FastChat's own data path (full run only): `fastchat.train.train.preprocess` (fschat
                0.2.36, with the two shims of benchmarks/preprocess.py) and transformers' Trainer.
  padded        `--packing padded`: 4 conversations a batch, padded to the longest, length-grouped.
  packed        `--packing packed`: `PackedDataset` rows (best-fit decreasing, up to model_max_length),
                one row a batch, attention per conversation with `sdpa_packed`.
  packed_sdpa   the same batches on transformers' plain sdpa (a block-diagonal mask derived from the
                position ids): how much of `packed` is packing and how much the attention kernel.
  trl           TRL's SFTTrainer, packing=True (its default bfd strategy, padding-free), one packed
                row a batch, given our tokenized ids and labels; gradient checkpointing and bf16, which
                SFTConfig turns on by default, off as for the others.
All: full fine-tuning in fp32, AdamW, lr 1e-4, one epoch over the same conversations, timed from
the first step's start to the last step's end (setup excluded). Supervised tokens are counted
after the causal shift, as the loss sees them: every system trains the same ones.

Timer: on a shared machine wall-clock time measures the neighbours; every system therefore runs
in a fresh process with one torch thread and is timed in CPU seconds of that process (on an idle
core the two agree; the wall-clock rate is reported too). Peak memory is the process's resident
set sampled every 20 ms during training, and its rise over the start of training.

Data: `sharegpt_mix` of benchmarks/preprocess.py (1-10 rounds, long-tailed log-normal turns),
tokenized with LLaMA-2's 32k SentencePiece vocabulary when cached (see preprocess.py), else the
tiny test tokenizer. Token ids are then renumbered to the ones that occur, so the model's
vocabulary (and LM head) stays small, as the layers of a tiny model are; lengths and labels stay
LLaMA's. TRL and fschat live in `.venv-bench` (never in the project's dependencies); run from
the project venv, the script re-runs itself there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
REEXEC_FLAG = "LLAMA_SFT_THROUGHPUT_REEXEC"
IGNORE = -100
SYSTEMS = {
    "fastchat": "FastChat pad-to-max (reproduced: our pipeline, --packing none)",
    "fastchat_own": "FastChat's own data path (fschat preprocess + Trainer)",
    "padded": "ours --packing padded (length-grouped)",
    "packed": "ours --packing packed (sdpa_packed)",
    "packed_sdpa": "ours --packing packed on plain sdpa (mask)",
    "trl": "TRL SFTTrainer packing=True (bfd, padding-free)",
}
MODEL = dict(
    hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4
)

sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


# --------------------------------------------------------------------------- data (orchestrator)


def prepare_data(
    max_length: int, n: int, seed: int, want_fastchat: bool, work: Path, renumber: bool = True
) -> dict:
    """Tokenize once with both pipelines, renumber ids (unless not `renumber`), save for the workers;
    returns data stats."""
    import preprocess as prep
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # "longer than model_max_length": expected, we truncate
    tokenizer, tok_desc = prep.load_llama_vocab(None)
    tokenizer.pad_token = tokenizer.unk_token  # as FastChat's train() does
    tokenizer.model_max_length = max_length
    tokenizer.padding_side = "right"
    records = prep.sharegpt_mix(n, seed)
    path = work / f"sharegpt-{max_length}.json"
    path.write_text(json.dumps(records))
    load, encode = prep.ours(tokenizer, max_length)
    rows, stats = encode(load(path))
    fc = None
    if want_fastchat:
        fc_load, fc_encode, _ = prep.fastchat(tokenizer)
        fc = fc_encode(fc_load(path))
    used = {tokenizer.pad_token_id} | {t for r in rows for t in r["input_ids"]}
    if fc is not None:
        used |= set(fc["input_ids"].unique().tolist())
    order = sorted(used) if renumber else list(range(len(tokenizer)))
    table = torch.full((max(order) + 1,), -1, dtype=torch.long)
    table[torch.tensor(order)] = torch.arange(len(order))

    def remap(ids):
        return [int(table[t]) if t != IGNORE else IGNORE for t in ids]

    ours_rows = [
        {
            "input_ids": remap(r["input_ids"]),
            "labels": remap(r["labels"]),
            "length": r["length"],
            "sample_index": i,
        }
        for i, r in enumerate(rows)
    ]
    blob = {"rows": ours_rows, "vocab": len(order), "pad": int(table[tokenizer.pad_token_id])}
    if fc is not None:
        labels = fc["labels"].clone()
        labels[labels != IGNORE] = table[labels[labels != IGNORE]]
        blob["fastchat"] = {
            "input_ids": table[fc["input_ids"]],
            "labels": labels,
            "attention_mask": fc["attention_mask"].long(),
        }
    file = work / f"data-{max_length}.pt"
    torch.save(blob, file)
    lengths = sorted(r["length"] for r in rows)
    return {
        "file": str(file),
        "tokenizer": tok_desc,
        "conversations": len(rows),
        "vocab_after_renumbering": len(order),
        "tokens": sum(lengths),
        "tokens_mean": round(sum(lengths) / len(lengths)),
        "tokens_p50": lengths[len(lengths) // 2],
        "tokens_p90": lengths[int(0.9 * len(lengths))],
        "tokens_max": lengths[-1],
        "truncated": stats.truncated,
        "supervised_tokens": sum(sum(1 for x in r["labels"][1:] if x != IGNORE) for r in rows),
    }


# --------------------------------------------------------------------------- one system (worker process)


class Counting:
    """Wraps a collator: per batch, supervised tokens (after the shift), tokens computed and real tokens."""

    def __init__(self, collator, max_length: int):
        self.collator, self.max_length, self.batches = collator, max_length, []

    def __call__(self, features):
        batch = self.collator(features)
        real = 0
        for f in features:
            if "attention_mask" in f:
                real += int(sum(f["attention_mask"]))
            else:
                real += min(len(f["input_ids"]), self.max_length)
        labels = batch["labels"]
        self.batches.append((int(labels[..., 1:].ne(IGNORE).sum()), batch["input_ids"].numel(), real))
        return batch


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.start: tuple[float, float] | None = None
            self.ends: list[tuple[float, float]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or (time.process_time(), time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append((time.process_time(), time.perf_counter()))

    return StepTimer()


class PeakRSS:
    """Resident set size sampled in a thread (a Trainer step allocates and frees far more than it keeps)."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self.start = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def training_args(out: str, seed: int, **overrides) -> dict:
    """TrainingArguments shared by every system: one epoch, AdamW, no logging or saving."""
    return dict(
        output_dir=out,
        num_train_epochs=1,
        learning_rate=1e-4,
        weight_decay=0.0,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        seed=seed,
        bf16=False,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        **overrides,
    )


def build_trainer(system: str, model, blob: dict, max_length: int, common: dict, batch: int | None = None):
    """The Trainer each system trains with; `batch` is conversations (fastchat*, padded) or packed rows."""
    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator

    from llama_sft.train.collator import PaddingCollator
    from llama_sft.train.packing import PackedCollator, PackedDataset
    from llama_sft.train.trainer import SFTTrainer

    rows, pad = blob["rows"], blob["pad"]
    if system == "trl":
        from trl import SFTConfig
        from trl import SFTTrainer as TRLTrainer

        from llama_sft.tiny import build_tokenizer

        tokenizer = build_tokenizer()  # TRL wants a processing class; only its pad id is used: make it ours
        tokenizer.pad_token_id = pad
        data = datasets.Dataset.from_list(
            [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        )
        args = SFTConfig(
            **{**common, "remove_unused_columns": True},
            per_device_train_batch_size=batch or 1,
            packing=True,
            max_length=max_length,
        )
        return TRLTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if system == "fastchat_own":
        fc = blob["fastchat"]
        data = [
            {k: fc[k][i] for k in ("input_ids", "labels", "attention_mask")}
            for i in range(len(fc["input_ids"]))
        ]
        args = TrainingArguments(**common, per_device_train_batch_size=batch or 4)
        return Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
    if system == "fastchat":
        data, collator, default, sampling = rows, PaddingCollator(pad, max_length=max_length), 4, "random"
    elif system == "padded":
        data, collator, default, sampling = (
            datasets.Dataset.from_list(rows),
            PaddingCollator(pad),
            4,
            "group_by_length",
        )
    else:
        data, collator, default, sampling = (
            PackedDataset(rows, max_length),
            PackedCollator(pad, max_length),
            1,
            "random",
        )
    args = TrainingArguments(
        **common, per_device_train_batch_size=batch or default, train_sampling_strategy=sampling
    )
    return SFTTrainer(model=model, args=args, train_dataset=data, data_collator=collator)


def worker(spec: dict) -> dict:
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    from llama_sft.train.packing import register_packed_attention

    torch.set_num_threads(spec["threads"])
    transformers.logging.set_verbosity_error()
    blob = torch.load(spec["data"])
    system, max_length = spec["system"], spec["max_length"]
    register_packed_attention()
    torch.manual_seed(spec["seed"])
    config = LlamaConfig(
        vocab_size=blob["vocab"],
        max_position_embeddings=max_length,
        pad_token_id=blob["pad"],
        bos_token_id=None,
        eos_token_id=None,
        use_cache=False,
        **spec["model"],
    )
    config._attn_implementation = "sdpa_packed" if system == "packed" else "sdpa"
    model = LlamaForCausalLM(config)
    if spec.get("conversations"):
        blob["rows"] = blob["rows"][: spec["conversations"]]
    trainer = build_trainer(system, model, blob, max_length, training_args(spec["out"], spec["seed"]))
    counter = Counting(trainer.data_collator, max_length)
    trainer.data_collator = counter
    timer = step_timer()
    trainer.add_callback(timer)
    with PeakRSS() as rss:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trainer.train()
        cpu1, wall1 = time.process_time(), time.perf_counter()
    steps = len(timer.ends)
    timed = counter.batches[:steps]  # one batch a step (the loader may have fetched one more)
    cpu = timer.ends[-1][0] - timer.start[0]
    wall = timer.ends[-1][1] - timer.start[1]
    supervised, tokens, real = (sum(b[i] for b in timed) for i in range(3))
    return {
        "system": system,
        "max_length": max_length,
        "steps": steps,
        "tokens_per_step": round(tokens / steps),
        "supervised_tokens": supervised,
        "tokens_computed": tokens,
        "real_tokens": real,
        "padding_share": round(1 - real / tokens, 4),
        "supervised_tokens_per_cpu_s": round(supervised / cpu, 1),
        "supervised_tokens_per_wall_s": round(supervised / wall, 1),
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "train_cpu_s_total": round(cpu1 - cpu0, 2),
        "train_wall_s_total": round(wall1 - wall0, 2),
        "peak_rss_mb": round(rss.peak / 2**20),
        "peak_rise_mb": round((rss.peak - rss.start) / 2**20),
        "attention": model.config._attn_implementation,
    }


# --------------------------------------------------------------------------- orchestration and report


def run_worker(spec: dict) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(spec["threads"]),
        "MKL_NUM_THREADS": str(spec["threads"]),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        REEXEC_FLAG: "1",
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec['system']} at {spec['max_length']} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def available(system: str) -> str | None:
    """Why a system cannot run here, or None."""
    module = {"trl": "trl", "fastchat_own": "fastchat"}.get(system)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} not installed (it lives in .venv-bench)"
    return None


def table(results: list[dict], lengths: list[int]) -> list[str]:
    lines = [
        "| model_max_length | system | supervised tok/s (CPU s) | vs FastChat | supervised tok/s (wall) | padding "
        "| peak RSS MB (rise) | steps x tokens |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for length in lengths:
        at = {r["system"]: r for r in results if r["max_length"] == length}
        base = at.get("fastchat", {}).get("supervised_tokens_per_cpu_s")
        for system, label in SYSTEMS.items():
            r = at.get(system)
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {length} | {label} | skipped: {r['skipped']} | | | | | |")
                continue
            ratio = f"{r['supervised_tokens_per_cpu_s'] / base:.2f}x" if base else "n/a"
            lines.append(
                f"| {length} | {label} | {r['supervised_tokens_per_cpu_s']:,.0f} | {ratio} | "
                f"{r['supervised_tokens_per_wall_s']:,.0f} | {100 * r['padding_share']:.1f}% | "
                f"{r['peak_rss_mb']:,} ({r['peak_rise_mb']:,}) | {r['steps']} x {r['tokens_per_step']:,} |"
            )
    return lines


def ratios(results: list[dict], length: int) -> dict:
    at = {r["system"]: r.get("supervised_tokens_per_cpu_s") for r in results if r["max_length"] == length}
    out = {}
    for name in ("fastchat", "trl", "padded", "packed_sdpa", "fastchat_own"):
        if at.get("packed") and at.get(name):
            out[f"packed_vs_{name}"] = round(at["packed"] / at[name], 3)
    return out


def write_markdown(result: dict, path: Path) -> None:
    m, lengths = result["machine"], result["lengths"]
    r2048 = result["ratios"].get(str(lengths[0]), {})
    data_lines = [
        f"- {length}: {d['conversations']} conversations, {d['tokens']:,} tokens (mean {d['tokens_mean']}, "
        f"p50 {d['tokens_p50']}, p90 {d['tokens_p90']}, max {d['tokens_max']}), {d['truncated']} truncated, "
        f"{d['supervised_tokens']:,} supervised"
        for length, d in result["data"].items()
    ]
    lines = [
        "# Training throughput on CPU: FastChat, llama-sft, TRL",
        "",
        f"`python benchmarks/throughput.py{' --quick' if result['quick'] else ''}`, {m['date']}: {m['cpu']}, "
        f"{m['cores_usable']} usable cores (load average {m['load_average_1m_at_start']} at the start, "
        f"{m['load_average_1m_at_end']} at the end: the machine is shared), "
        f"{result['threads']} torch thread(s), each system in a fresh process, timed in CPU seconds (see the script's docstring).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}; commit {m['git_commit']}"
        + (" plus local changes under src/" if m["local_changes_under_src"] else "")
        + ".",
        "",
        f"Model: random LLaMA, {json.dumps(result['model'])}, vocabulary renumbered to the ids in use; fp32, full "
        "fine-tuning, AdamW, one epoch over the same conversations for every system.",
        f"Data: `sharegpt_mix` (seed {result['seed']}), tokenizer: {next(iter(result['data'].values()))['tokenizer']}.",
        *data_lines,
        "",
        *table(result["results"], lengths),
        "",
        "## Summary",
        "",
        result["summary"],
        "",
        f"Ratios of `packed` at {lengths[0]}: {json.dumps(r2048)}.",
    ]
    if len(lengths) > 1:
        lines.append(f"At {lengths[1]}: {json.dumps(result['ratios'].get(str(lengths[1]), {}))}.")
    lines += [
        "",
        "Reading the table: *padding* is the share of computed tokens that are padding; a packed batch is one row as",
        "long as its pack (no padding to model_max_length). *steps x tokens* is optimizer steps x tokens computed per",
        "step. Rates are per CPU second of the system's own process (one torch thread); the wall-clock column also",
        "measures the neighbours on this shared machine. Peak RSS is the whole process; the rise is over the start of",
        "training. Every system trains the same supervised tokens (see throughput.json).",
    ]
    path.write_text("\n".join(lines) + "\n")


def summary(result: dict) -> str:
    """The paragraph the README quotes: ratios of `packed` at each length, and where they come from."""

    def rate(at, name):
        return at[name]["supervised_tokens_per_cpu_s"]

    lengths, by_length = result["lengths"], {}
    for length in lengths:
        at = {r["system"]: r for r in result["results"] if r["max_length"] == length and "skipped" not in r}
        if {"packed", "fastchat"} <= at.keys():
            by_length[length] = at
    if not by_length:
        return ""
    first, *rest = by_length
    at, d = by_length[first], result["data"][str(first)]

    def also(name, fmt):
        more = [
            fmt.format(rate(by_length[n], "packed") / rate(by_length[n], name), n)
            for n in rest
            if name in by_length[n]
        ]
        return f" ({', '.join(more)})" if more else ""

    p, f = at["packed"], at["fastchat"]
    fill = p["real_tokens"] / (p["steps"] * first)
    text = (
        f"On CPU, with a {result['model']['num_hidden_layers']}-layer random LLaMA (d {result['model']['hidden_size']}) "
        f"and ShareGPT-like conversations (p50 {d['tokens_p50']} tokens, p90 {d['tokens_p90']}), `--packing packed` "
        f"trains {rate(at, 'packed') / rate(at, 'fastchat'):.1f}x the supervised tokens per second of FastChat's "
        f"pad-to-max batching at model_max_length {first}" + also("fastchat", "{:.1f}x at {}")
    )
    if "padded" in at:
        text += f", {rate(at, 'packed') / rate(at, 'padded'):.2f}x our `padded` mode" + also(
            "padded", "{:.2f}x at {}"
        )
    if "trl" in at:
        text += f" and {rate(at, 'packed') / rate(at, 'trl'):.2f}x TRL's SFTTrainer packing" + also(
            "trl", "{:.2f}x at {}"
        )
    text += (
        ", on the same supervised tokens with the same losses and gradients (tests/train/test_equivalence.py). "
        f"FastChat computes {100 * f['padding_share']:.0f}% padding at {first}"
        + f"; packed rows carry none and are filled to {100 * fill:.0f}% of model_max_length by best-fit decreasing."
    )
    if {"packed_sdpa", "trl"} <= at.keys():
        text += (
            f" The lead over TRL is the attention kernel: on plain sdpa the same packed batches run at "
            f"{rate(at, 'packed_sdpa') / rate(at, 'trl'):.2f}x TRL, and `sdpa_packed` attends within each conversation "
            "instead of masking a whole row. With flash-attention on a GPU both use varlen kernels, so expect parity "
            "with TRL there (benchmarks/gpu_throughput.py measures it)."
        )
    if "fastchat_own" in at:
        text += (
            f" FastChat's own data path (fschat's preprocess) runs at {rate(at, 'fastchat_own') / rate(at, 'fastchat'):.2f}x "
            "our reproduction of its batching, on the same supervised token count."
        )
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="2048 only, 24 conversations, systems fastchat, packed and trl (< 5 min)",
    )
    p.add_argument(
        "--lengths", type=int, nargs="+", help="model_max_length values (default 2048 4096; quick 2048)"
    )
    p.add_argument("--conversations", type=int, help="conversations per length (default 64; quick 24)")
    p.add_argument(
        "--systems", nargs="+", choices=list(SYSTEMS), help="default: all (quick: fastchat packed trl)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per system process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--save",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write benchmarks/results/throughput.{json,md} (default: full run yes, --quick no)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if (
        (available("trl") or available("fastchat_own"))
        and BENCH_PYTHON.exists()
        and not os.environ.get(REEXEC_FLAG)
    ):
        print(
            f"trl/fastchat are not importable here; re-running under {BENCH_PYTHON}",
            file=sys.stderr,
            flush=True,
        )
        os.execve(
            str(BENCH_PYTHON),
            [str(BENCH_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]],
            {**os.environ, REEXEC_FLAG: "1"},
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="llama-sft-throughput-"))
    try:
        return run_all(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args, work: Path) -> int:
    import preprocess as prep

    lengths = args.lengths or ([2048] if args.quick else [2048, 4096])
    n = args.conversations or (24 if args.quick else 64)
    systems = args.systems or (["fastchat", "packed", "trl"] if args.quick else list(SYSTEMS))
    save = (not args.quick) if args.save is None else args.save
    started, load_at_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    results, data = [], {}
    for length in lengths:
        data[str(length)] = prepare_data(
            length, n, args.seed, "fastchat_own" in systems and not available("fastchat_own"), work
        )
        for system in systems:
            why = available(system)
            if why:
                results.append({"system": system, "max_length": length, "skipped": why})
                print(f"[{length}] {system}: skipped ({why})", file=sys.stderr, flush=True)
                continue
            spec = {
                "system": system,
                "max_length": length,
                "data": data[str(length)]["file"],
                "threads": args.threads,
                "seed": args.seed,
                "model": MODEL,
                "out": str(work / f"{system}-{length}"),
            }
            r = run_worker(spec)
            results.append(r)
            print(
                f"[{length}] {system:12s} {r['supervised_tokens_per_cpu_s']:9,.0f} supervised tok/s (CPU), "
                f"{r['supervised_tokens_per_wall_s']:9,.0f} (wall), padding {100 * r['padding_share']:5.1f}%, "
                f"peak {r['peak_rss_mb']} MB, {r['steps']} steps  [{time.perf_counter() - started:.0f}s]",
                file=sys.stderr,
                flush=True,
            )
    result = {
        "quick": args.quick,
        "threads": args.threads,
        "seed": args.seed,
        "model": MODEL,
        "lengths": lengths,
        "systems": {s: SYSTEMS[s] for s in systems},
        "data": data,
        "results": results,
        "ratios": {str(length): ratios(results, length) for length in lengths},
        "machine": prep.machine(),
        "elapsed_s": round(time.perf_counter() - started),
    }
    result["machine"]["load_average_1m_at_start"] = load_at_start
    result["machine"]["versions"]["trl"] = package_version("trl")
    result["summary"] = summary(result)
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "throughput.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        write_markdown(result, RESULTS / "throughput.md")
        print(f"wrote {RESULTS / 'throughput.json'} and {RESULTS / 'throughput.md'}", file=sys.stderr)
    print("\n".join(table(results, lengths)))
    print(result["summary"])
    r = result["ratios"][str(lengths[0])]
    fmt = lambda key: f"{r[key]:.2f}" if key in r else "n/a"  # noqa: E731
    print(
        f"supervised tokens/s ratio: vs FastChat {fmt('packed_vs_fastchat')}, vs TRL {fmt('packed_vs_trl')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
