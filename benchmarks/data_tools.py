"""Benchmark `llama-sft data clean|dedupe|split-long|convert|mix|split` on a generated raw export.

    python benchmarks/data_tools.py            # 10k, then 100k conversations
    python benchmarks/data_tools.py --quick    # 10k conversations only

Generates a ShareGPT-like file with problems planted at known rates (HTML replies, stray
whitespace, empty replies, non-alternating turns, refusals, broken JSON lines, exact and near
duplicates, long conversations, single rounds longer than the budget), then runs the tools as
a preparation pipeline would: clean -> dedupe -> split-long -> convert -> mix -> split. Each
command runs in its own process through the real CLI; the report gives records/s (from the
tool's own timer, and wall time including start-up), peak RSS (VmHWM of that process), and
checks every planted count against what the tool reported. Results go to
benchmarks/results/data_tools.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REAL_VOCAB = Path.home() / ".cache" / "llama-sft" / "vocab" / "llama-spm-hf"

# Planted problems: share of records, each record carries at most one.
RATES = {
    "html": 0.10,
    "whitespace": 0.05,
    "empty_reply": 0.005,
    "not_alternating": 0.005,
    "refusal": 0.005,
    "malformed_json": 0.001,
    "exact_duplicate": 0.02,
    "near_duplicate": 0.01,
    "long": 0.03,
    "huge_round": 0.002,
}
REFUSAL = "As an AI language model, I cannot help with that request."


class Generator:
    """Seeded synthetic conversations: pseudo-words with an English-like letter mix."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        letters, weights = (
            "etaoinshrdlcumwfgypbvkjxqz",
            [12, 9, 8, 7, 7, 6, 6, 6, 5, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1],
        )
        self.words = sorted(
            {"".join(self.rng.choices(letters, weights, k=self.rng.randint(2, 9))) for _ in range(6000)}
        )
        self.sources: list[dict] = []  # recent clean records that duplicates copy

    def text(self, n_words: int) -> str:
        words = self.rng.choices(self.words, k=n_words)
        out, i = [], 0
        while i < len(words):
            k = self.rng.randint(8, 15)
            sentence = " ".join(words[i : i + k])
            out.append(sentence[0].upper() + sentence[1:] + ".")
            i += k
        return " ".join(out)

    def rounds(self, n: int, user=(5, 30), reply=(20, 120)) -> list[dict]:
        turns = []
        for _ in range(n):
            turns.append({"from": "human", "value": self.text(self.rng.randint(*user))})
            turns.append({"from": "gpt", "value": self.text(self.rng.randint(*reply))})
        return turns

    def html(self, text: str) -> str:
        words = text.split()
        third = max(1, len(words) // 3)
        code = "def f(x):\n    return x * 2\n"
        return (
            '<div class="markdown prose w-full break-words dark:prose-invert light"><p>'
            + " ".join(words[:third])
            + '</p><pre><div class="bg-black"><div class="flex"><span>python</span><button>Copy code</button></div>'
            + f'<div class="p-4"><code class="language-python">{code}</code></div></div></pre><ul><li>'
            + " ".join(words[third : 2 * third])
            + "</li><li><strong>"
            + " ".join(words[2 * third :])
            + "</strong></li></ul></div>"
        )

    def record(self, i: int, kind: str) -> dict | str:
        rid = f"gen{i}"
        rng = self.rng
        if kind == "exact_duplicate":
            src = rng.choice(self.sources)
            turns = [dict(t) for t in src["conversations"]]
            first = turns[0]["value"].upper().split(" ")
            turns[0]["value"] = (
                " ".join(first[:1]) + "  " + " ".join(first[1:])
            )  # case and spacing differ only
            return {"id": rid, "conversations": turns}
        if kind == "near_duplicate":
            long_enough = [
                s for s in self.sources if sum(len(t["value"].split()) for t in s["conversations"]) >= 250
            ]
            src = rng.choice(long_enough or self.sources)
            turns = [dict(t) for t in src["conversations"]]
            words = turns[1]["value"].split(" ")
            words[len(words) // 2] = "zzplanted"
            turns[1]["value"] = " ".join(words)
            return {"id": rid, "conversations": turns}
        if kind == "malformed_json":
            return '{"id": "' + rid + '", "conversations": [{"from": "human", "value": "cut off'
        if kind == "long":
            return {
                "id": rid,
                "conversations": self.rounds(rng.randint(15, 25), user=(20, 40), reply=(60, 120)),
            }
        if kind == "huge_round":
            turns = self.rounds(1) + [
                {"from": "human", "value": self.text(20)},
                {"from": "gpt", "value": self.text(3000)},
            ]
            return {"id": rid, "conversations": turns}
        n = rng.randint(2, 3) if kind == "empty_reply" else rng.randint(1, 3)
        turns = self.rounds(n)
        if kind == "html":
            for t in turns:
                if t["from"] == "gpt":
                    t["value"] = self.html(t["value"])
        elif kind == "whitespace":
            t = turns[rng.randrange(len(turns))]
            t["value"] = t["value"].replace(". ", ".  \r\n", 1) + "  "
        elif kind == "empty_reply":
            turns[1]["value"] = ""
        elif kind == "not_alternating":
            turns.insert(1, {"from": "human", "value": self.text(10)})
        elif kind == "refusal":
            turns[-1]["value"] = REFUSAL + " " + turns[-1]["value"]
        record = {"id": rid, "conversations": turns}
        if kind == "normal":
            self.sources.append(record)
            if len(self.sources) > 2000:
                self.sources = self.sources[-1000:]
        return record


def generate(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    gen = Generator(seed)
    planted = {k: 0 for k in RATES}
    kinds, cumulative, acc = list(RATES), [], 0.0
    for k in kinds:
        acc += RATES[k]
        cumulative.append(acc)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            u = gen.rng.random()
            kind = next((k for k, c in zip(kinds, cumulative, strict=True) if u < c), "normal")
            if kind in ("exact_duplicate", "near_duplicate") and len(gen.sources) < 50:
                kind = "normal"
            record = gen.record(i, kind)
            out.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n")
            if kind != "normal":
                planted[kind] += 1
    return planted


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model,
        "cores": cores,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# The child reports its own high-water mark: ru_maxrss from wait4 would carry over the parent's
# resident size from before exec (Linux keeps the larger of the two), and this harness imports
# transformers to measure the tokenizer.
CHILD = """
import sys
from llama_sft.cli.main import main
code = main(sys.argv[2:])
hwm = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))
open(sys.argv[1], "w").write(hwm)
sys.exit(code)
"""


def run_cli(args: list[str], report: Path) -> dict:
    """Run `llama-sft data ...` in a child process; its summary, wall time and peak RSS."""
    peak = report.with_suffix(".vmhwm")
    cmd = [sys.executable, "-c", CHILD, str(peak), "data", *args, "--quiet", "--report", str(report)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"`llama-sft data {' '.join(args)}` exited {proc.returncode}:\n{proc.stderr.decode()[-3000:]}"
        )
    summary = json.loads(report.read_text())
    return {
        "summary": summary,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(int(peak.read_text()) / 1024, 1),
    }


def count_rounds(path: Path) -> int:
    with open(path, encoding="utf-8") as handle:
        return sum(sum(t["from"] == "gpt" for t in json.loads(line)["conversations"]) for line in handle)


def reason(summary: dict, name: str) -> int:
    return sum(r["records"] for r in summary["reasons"] if r["reason"] == name)


def bench(n: int, work: Path, tokenizer: str, tokenizer_note: str, max_length: int, seed: int = 0) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "raw.jsonl"
    t0 = time.perf_counter()
    planted = generate(raw, n, seed)
    gen_s = time.perf_counter() - t0
    rows, checks = [], []

    def step(name: str, args: list[str], records_in: int) -> dict:
        result = run_cli(args, work / f"{name}.report.json")
        s = result["summary"]
        rows.append(
            {
                "command": name,
                "args": " ".join(args),
                "records_in": records_in,
                "records_out": s["written"],
                "tool_s": s["seconds"],
                "records_per_s": round(records_in / s["seconds"], 1) if s["seconds"] else None,
                "cpu_s": s["cpu_seconds"],
                "records_per_cpu_s": round(records_in / s["cpu_seconds"], 1) if s["cpu_seconds"] else None,
                "wall_s": result["wall_s"],
                "wall_records_per_s": round(records_in / result["wall_s"], 1),
                "peak_rss_mib": result["peak_rss_mib"],
            }
        )
        return s

    def check(what: str, found: int, expected: int) -> None:
        checks.append({"check": what, "found": found, "planted": expected, "ok": found == expected})

    clean = work / "clean.jsonl"
    s = step("clean", ["clean", str(raw), "-o", str(clean), "--drop-pattern", "as an AI language model"], n)
    check("clean: html_to_markdown", reason(s, "html_to_markdown"), planted["html"])
    check("clean: whitespace_normalized", reason(s, "whitespace_normalized"), planted["whitespace"])
    check("clean: empty_round_dropped", reason(s, "empty_round_dropped"), planted["empty_reply"])
    check("clean: not_alternating (dropped)", reason(s, "not_alternating"), planted["not_alternating"])
    check("clean: pattern_matched (dropped)", reason(s, "pattern_matched"), planted["refusal"])
    check("clean: malformed_json (dropped)", reason(s, "malformed_json"), planted["malformed_json"])
    n_clean = s["written"]

    deduped = work / "dedupe.jsonl"
    s = step(
        "dedupe",
        ["dedupe", str(clean), "-o", str(deduped), "--clusters", str(work / "clusters.jsonl")],
        n_clean,
    )
    check("dedupe: exact_duplicate", reason(s, "exact_duplicate"), planted["exact_duplicate"])
    check("dedupe: near_duplicate", reason(s, "near_duplicate"), planted["near_duplicate"])
    n_dedupe = s["written"]

    pieces = work / "pieces.jsonl"
    s = step(
        "split-long",
        [
            "split-long",
            str(deduped),
            "-o",
            str(pieces),
            "--tokenizer",
            tokenizer,
            "--max-length",
            str(max_length),
            "--conv_template",
            "vicuna_v1.1",
        ],
        n_dedupe,
    )
    check("split-long: split", reason(s, "split"), planted["long"])
    check("split-long: round_too_long", reason(s, "round_too_long"), planted["huge_round"])
    rounds_in, rounds_out = count_rounds(deduped), count_rounds(pieces)
    check("split-long: every round kept but the too-long ones", rounds_out, rounds_in - planted["huge_round"])
    n_pieces = s["written"]

    openai = work / "openai.jsonl"
    step("convert", ["convert", str(pieces), "--to", "openai", "-o", str(openai)], n_pieces)
    back = work / "back.jsonl"
    run_cli(["convert", str(openai), "--to", "sharegpt", "-o", str(back)], work / "back.report.json")
    check(
        "convert: ShareGPT -> OpenAI -> ShareGPT is byte-identical",
        int(back.read_bytes() == pieces.read_bytes()),
        1,
    )

    mixed = work / "mix.jsonl"
    total = n_pieces // 2
    s = step(
        "mix",
        ["mix", f"{pieces}:0.7", f"{openai}:0.3", "--total", str(total), "--seed", "0", "-o", str(mixed)],
        2 * n_pieces,
    )
    check("mix: records written == --total", s["written"], total)

    split_dir = work / "split"
    s = step(
        "split", ["split", str(pieces), "--eval-ratio", "0.01", "--seed", "0", "-o", str(split_dir)], n_pieces
    )
    manifest = json.loads((split_dir / "manifest.json").read_text())
    check("split: eval groups == round(0.01 x records)", manifest["eval_groups"], round(0.01 * n_pieces))
    train_parents = {
        json.loads(line).get("parent_id") for line in open(split_dir / "train.jsonl", encoding="utf-8")
    }
    eval_parents = {
        json.loads(line).get("parent_id") for line in open(split_dir / "eval.jsonl", encoding="utf-8")
    }
    check("split: no conversation's pieces on both sides", len((train_parents & eval_parents) - {None}), 0)

    return {
        "records": n,
        "tokenizer": tokenizer_note,
        "max_length": max_length,
        "generate_s": round(gen_s, 1),
        "raw_file_mib": round(raw.stat().st_size / 2**20, 1),
        "planted": planted,
        "commands": rows,
        "checks": checks,
    }


def tokenizer_for(work: Path, kind: str) -> tuple[str, str, int]:
    """(--tokenizer value, description, --max-length): the budget is set to about 5,500 characters of this
    text, so every ordinary conversation (at most about 3,300) fits and every long one (at least 7,800) does not."""
    from llama_sft.data.tokenizer import load_tokenizer
    from llama_sft.tiny import build_tokenizer

    if kind == "real":
        arg, note, tok = (
            str(REAL_VOCAB),
            f"LLaMA SentencePiece vocab at {REAL_VOCAB} (AutoTokenizer + prepare_tokenizer)",
            None,
        )
        tok = load_tokenizer(arg)
    elif kind == "tiny":
        arg, note, tok = (
            "tiny",
            "llama_sft.tiny.build_tokenizer() (the 600-merge test BPE)",
            build_tokenizer(),
        )
    else:  # a LLaMA-sized vocabulary trained on text like the benchmark's
        gen = Generator(seed=1)
        tok = build_tokenizer([gen.text(200) for _ in range(3000)], vocab_size=32000)
        arg, note = (
            str(work / "tokenizer-32k"),
            "llama_sft.tiny.build_tokenizer(generated text, vocab_size=32000)",
        )
        tok.save_pretrained(arg)
    sample = Generator(seed=2).text(3000)
    chars_per_token = len(sample) / len(tok(sample, add_special_tokens=False)["input_ids"])
    max_length = max(256, round(5500 / chars_per_token / 64) * 64)
    return arg, f"{note}; {chars_per_token:.2f} characters per token on this text", max_length


TARGETS = {"clean": 2000, "split-long": 1000}


def targets(result: dict) -> list[str]:
    """The issue's targets against the largest run: wall rate, CPU rate and peak memory."""
    run = result["runs"][-1]
    rows = {r["command"]: r for r in run["commands"]}
    load = result["machine"]["load_average_at_start"][1]
    lines = [
        f"## Targets ({run['records']:,} conversations)",
        "",
        "| target | wall (load average about " + f"{load:.0f} on {result['machine']['cores']} cores) | "
        "per CPU-second | met |",
        "|---|---:|---:|---|",
    ]
    for name, goal in TARGETS.items():
        r = rows[name]
        verdict = (
            (
                "yes"
                if r["records_per_s"] >= goal
                else "per CPU-second only: the shared machine gave this run "
                f"{r['cpu_s'] / r['tool_s']:.1f} of its {result['machine']['cores']} cores"
            )
            if r["records_per_cpu_s"] >= goal
            else "no"
        )
        lines.append(
            f"| {name} >= {goal:,} records/s | {r['records_per_s']:,.0f} | {r['records_per_cpu_s']:,.0f} | {verdict} |"
        )
    peak = max(r["peak_rss_mib"] for r in run["commands"])
    growth = {g["command"]: g["bytes_per_extra_record"] for g in result.get("memory_growth", [])}
    note = ""
    if growth.get("dedupe"):
        at_1gib = (1024 - rows["dedupe"]["peak_rss_mib"]) * 2**20 / growth["dedupe"] + run["records"]
        note = (
            f"; flat in the input size except dedupe, about {growth['dedupe']:,.0f} bytes per kept record "
            f"(1 GiB near {at_1gib / 1e6:.1f} million records)"
        )
    lines += [f"| peak RSS < 1 GiB | {peak} MiB at most{note} | | {'yes' if peak < 1024 else 'no'} |", ""]
    return lines


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Data tools benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores available, Python {m['python']}. The machine is shared with other "
        f"jobs: load average {m['load_average_at_start']} at the start and {m.get('load_average_at_end')} at the end "
        "(1, 5, 15 minutes), so wall-clock rates are lower than on an idle machine.",
        f"Command: `python benchmarks/data_tools.py{' --quick' if result['quick'] else ''}` (runs the sizes below in "
        "turn); "
        "each command runs in its own process through the real CLI (`--quiet --report`).",
        "",
        "records/s = records in / the tool's own wall time (reading, work, writing; from `--report`). "
        "records/CPU-s = records in / the CPU time of the tool's process in that span, all threads (split-long's "
        "tokenizer runs two), which load from other jobs does not inflate. wall s includes start-up and imports. "
        "Peak RSS is the VmHWM of the command's process (read by the process itself as it exits).",
        "",
    ]
    lines += targets(result)
    for run in result["runs"]:
        lines += [
            f"## {run['records']:,} conversations ({run['raw_file_mib']} MiB raw)",
            "",
            f"split-long: `--max-length {run['max_length']}` with {run['tokenizer']}. Generating the file took "
            f"{run['generate_s']} s.",
            "",
            "| command | records in | records out | records/s | records/CPU-s | wall s | wall records/s | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in run["commands"]:
            lines.append(
                f"| {row['command']} | {row['records_in']:,} | {row['records_out']:,} | {row['records_per_s']:,.0f} | {row['records_per_cpu_s']:,.0f} | "
                f"{row['wall_s']} | {row['wall_records_per_s']:,.0f} | {row['peak_rss_mib']} |"
            )
        lines += ["", "| planted problem found | found | planted | ok |", "|---|---:|---:|---|"]
        for c in run["checks"]:
            lines.append(
                f"| {c['check']} | {c['found']:,} | {c['planted']:,} | {'yes' if c['ok'] else '**NO**'} |"
            )
        lines.append("")
    if result.get("memory_growth"):
        lines += [
            "## Memory against input size",
            "",
            "| command | peak RSS MiB (records in) | peak RSS MiB (records in) | bytes per extra record |",
            "|---|---:|---:|---:|",
        ]
        for g in result["memory_growth"]:
            lines.append(
                f"| {g['command']} | {g['peak_rss_mib'][0]} ({g['records'][0]:,}) | "
                f"{g['peak_rss_mib'][1]} ({g['records'][1]:,}) | {g['bytes_per_extra_record']:,.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def memory_growth(runs: list[dict]) -> list[dict]:
    """Peak RSS of each command at the smallest and largest size, and the growth per record."""
    if len(runs) < 2:
        return []
    small, large = runs[0], runs[-1]
    out = []
    for a, b in zip(small["commands"], large["commands"], strict=True):
        extra = b["records_in"] - a["records_in"]
        grow = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 2**20 / extra if extra else 0.0
        out.append(
            {
                "command": a["command"],
                "records": [a["records_in"], b["records_in"]],
                "peak_rss_mib": [a["peak_rss_mib"], b["peak_rss_mib"]],
                "bytes_per_extra_record": round(grow, 1),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="only 10k conversations (default: 10k, then 100k)"
    )
    parser.add_argument("--records", type=int, nargs="+", default=None, help="sizes to run instead")
    parser.add_argument(
        "--tokenizer",
        default="auto",
        choices=["auto", "real", "tiny", "bpe32k"],
        help=f"split-long tokenizer: auto = the LLaMA vocab at {REAL_VOCAB} when present, else tiny "
        "(llama_sft.tiny.build_tokenizer()); bpe32k = a 32k BPE trained on the generated text",
    )
    parser.add_argument("--out", default=str(RESULTS / "data_tools"), help="results path without extension")
    parser.add_argument("--keep", default=None, help="keep the generated files in this directory")
    args = parser.parse_args()
    sizes = args.records or ([10_000] if args.quick else [10_000, 100_000])
    with tempfile.TemporaryDirectory(prefix="llama-sft-datatools-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        kind = ("real" if REAL_VOCAB.exists() else "tiny") if args.tokenizer == "auto" else args.tokenizer
        tokenizer, note, max_length = tokenizer_for(work, kind)
        result = {"machine": machine(), "quick": args.quick, "runs": []}
        for n in sizes:
            result["runs"].append(bench(n, work / str(n), tokenizer, note, max_length))
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["memory_growth"] = memory_growth(result["runs"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(c["ok"] for run in result["runs"] for c in run["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
