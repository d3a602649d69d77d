"""`data mix` and `data split`: reproducible sampling and train/eval splits, recorded in a manifest.

Both read their inputs more than once instead of holding records: the first pass validates and
counts, later passes pick and write. Memory is the chosen indices (mix) or the eval groups
(split), never the records.

mix: each source gets round(weight share x total) records (largest remainder, so they add up to
--total exactly), picked uniformly without replacement with `random.Random(seed)`; with
--repeat a source smaller than its share is written whole as many times as fits and sampled for
the rest. Sources keep their file order and are interleaved at random (seeded).

split: the eval set is the k conversation groups with the smallest blake2b(seed, group) hash,
k = round(eval_ratio x usable records) (or --eval-size). A group is a record's `parent_id` (set
by split-long on every piece) or else its id, so pieces of one conversation never straddle the
split. A record's side depends only on the seed, its group and the threshold.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterator
from pathlib import Path

from llama_sft.data.formats import RecordError

from .records import Chat, parse_record, to_sharegpt
from .stream import Run, ToolError, file_sha256


def parse_source(spec: str) -> tuple[str, float]:
    """'data/a.jsonl:0.7' -> ('data/a.jsonl', 0.7)."""
    path, sep, weight = spec.rpartition(":")
    try:
        value = float(weight)
    except ValueError:
        value = -1.0
    if not sep or not path or value <= 0:
        raise ToolError(
            f"mix source {spec!r} must be PATH:WEIGHT with a positive weight, e.g. chat.jsonl:0.7"
        )
    return path, value


def shares(weights: list[float], total: int) -> list[int]:
    """Integer shares of `total` proportional to `weights` that add up to `total` (largest remainder)."""
    exact = [w / sum(weights) * total for w in weights]
    out = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def _usable(run: Run, raw) -> tuple[Chat | None, list[str]]:
    """Parse again in a later pass; problems were already counted by the first pass."""
    try:
        return parse_record(raw, run.data_format)
    except RecordError:
        return None, []


def _count(run: Run, paths: list[str], desc: str) -> list[int]:
    counts = []
    for path in paths:
        counts.append(
            sum(
                run.parse(raw)[0] is not None
                for raw in run.raw_records([path], desc=f"{desc} {Path(path).name}")
            )
        )
    return counts


def _version() -> str:
    from llama_sft import __version__

    return __version__


def run_mix(run: Run, sources: list[tuple[str, float]], total: int, seed: int, repeat: bool = False) -> int:
    if total < 1:
        raise ToolError(f"--total must be positive, got {total}")
    summary = run.summary
    paths = [p for p, _ in sources]
    counts = _count(run, paths, "count")
    if summary.errors:
        return run.finish()
    quotas = shares([w for _, w in sources], total)
    rng = random.Random(seed)
    plans = []
    for (path, _), n, k in zip(sources, counts, quotas, strict=True):
        if k > n and (not repeat or n == 0):
            hint = "" if n == 0 else "; lower --total, change the weights, or pass --repeat to reuse records"
            raise ToolError(
                f"{path} has {n:,} usable record(s) but its share of --total {total:,} is {k:,}{hint}"
            )
        whole, rest = divmod(k, n) if n else (0, 0)
        plans.append((whole, sorted(rng.sample(range(n), rest))))

    def picks(path: str, whole: int, chosen: list[int]) -> Iterator[Chat]:
        ordinal, at = 0, 0
        for raw in run.raw_records([path], desc=f"mix {Path(path).name}", count=False):
            chat, notes = _usable(run, raw)
            if chat is None:
                continue
            times = whole
            if at < len(chosen) and chosen[at] == ordinal:
                times, at = times + 1, at + 1
            ordinal += 1
            if times == 0:
                summary.note("dropped", "not_sampled", chat.id)
                continue
            for reason in notes + (["repeated"] if times > 1 else []):
                summary.note("changed", reason, chat.id)
            summary.changed += bool(notes) or times > 1
            for _ in range(times):
                yield chat

    streams = [picks(path, whole, chosen) for path, (whole, chosen) in zip(paths, plans, strict=True)]
    remaining, left = list(quotas), total
    while left:
        r = rng.randrange(left)
        s = 0
        while r >= remaining[s]:
            r -= remaining[s]
            s += 1
        run.write(to_sharegpt(next(streams[s])))
        remaining[s] -= 1
        left -= 1
    for stream in streams:  # walk the unpicked tails so they are counted as not sampled
        for _ in stream:
            raise AssertionError("a source yielded more records than its share")
    table = [
        {
            "path": p,
            "weight": w,
            "share": round(w / sum(x for _, x in sources), 6),
            "usable_records": n,
            "picked": k,
        }
        for (p, w), n, k in zip(sources, counts, quotas, strict=True)
    ]
    summary.extra["mix"] = {"seed": seed, "total": total, "sources": table}
    manifest = {
        "command": "mix",
        "llama_sft": _version(),
        "seed": seed,
        "total": total,
        "repeat": repeat,
        "sources": [{**row, "sha256": file_sha256(row["path"])} for row in table],
        "output": {"path": str(run.output), "records": run.writer.count, "sha256": run.writer.sha256},
        "method": "per source: round(share x total) records (largest remainder), random.Random(seed).sample of usable "
        "record ordinals, sources interleaved at random with the same generator",
    }
    return run.finish(manifest)


def group_hash(seed: int, group: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{seed}\x00{group}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def _group(chat: Chat) -> str:
    parent = chat.meta.get("parent_id")
    return str(parent) if parent not in (None, "") else chat.id


def run_split(
    run: Run,
    eval_ratio: float | None,
    seed: int,
    eval_path: str,
    eval_size: int | None = None,
    manifest_file: str | None = None,
) -> int:
    if eval_size is None and (eval_ratio is None or not 0.0 <= eval_ratio < 1.0):
        raise ToolError(f"--eval-ratio must be in [0, 1), got {eval_ratio}")
    summary = run.summary
    eval_writer = run.add_writer(eval_path)
    counts = _count(run, run.inputs, "count")
    if summary.errors:
        return run.finish()
    usable = sum(counts)
    k = eval_size if eval_size is not None else round(eval_ratio * usable)
    if not 0 <= k <= usable:
        raise ToolError(f"--eval-size {k} is more than the {usable:,} usable record(s)")
    heap: list[int] = []  # negated hashes: a max-heap of the k smallest group hashes
    members: set[int] = set()
    for raw in run.raw_records(desc="choose eval", count=False):
        chat, _ = _usable(run, raw)
        if chat is None or k == 0:
            continue
        h = group_hash(seed, _group(chat))
        if h in members:
            continue
        if len(heap) < k:
            heapq.heappush(heap, -h)
            members.add(h)
        elif h < -heap[0]:
            members.discard(-heapq.heappushpop(heap, -h))
            members.add(h)
    threshold = -heap[0] if heap else -1
    for raw in run.raw_records(desc="write", count=False):
        chat, notes = _usable(run, raw)
        if chat is None:
            continue
        for reason in notes:
            summary.note("changed", reason, chat.id)
        summary.changed += bool(notes)
        to_eval = group_hash(seed, _group(chat)) <= threshold
        run.write(to_sharegpt(chat), eval_writer if to_eval else None)
    train, evaluation = run.writer, eval_writer
    summary.extra["split"] = {
        "seed": seed,
        "eval_groups": len(heap),
        "train": train.count,
        "eval": evaluation.count,
    }
    manifest = {
        "command": "split",
        "llama_sft": _version(),
        "seed": seed,
        "eval_ratio": eval_ratio,
        "eval_groups": len(heap),
        "inputs": [
            {"path": p, "sha256": file_sha256(p), "usable_records": n}
            for p, n in zip(run.inputs, counts, strict=True)
        ],
        "train": {"path": str(run.output), "records": train.count, "sha256": train.sha256},
        "eval": {"path": str(eval_path), "records": evaluation.count, "sha256": evaluation.sha256},
        "method": "eval = the k groups (parent_id, else id) with the smallest blake2b(seed, group) hash, "
        "k = round(eval_ratio x usable records) or --eval-size",
    }
    return run.finish(manifest, manifest_file)
