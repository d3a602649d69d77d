"""Tokenized, labelled datasets built once and cached on disk.

The cache key covers everything that changes the ids or labels: the data files' content hash,
the tokenizer (its full serialized form), the template, the max length and the masking
strategy. Conversations that lose every supervised token to truncation are reported (and stop
the run unless skip_bad), never trained as all-masked rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .encode import encode_conversations
from .issues import DataError, Issue, ValidationReport
from .messages import Conversation
from .templates import Template

CACHE_VERSION = "2"  # 2: rows carry their conversation group; boundary-token issues


def default_cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_SFT_CACHE", Path.home() / ".cache" / "llama-sft")) / "data"


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (or of every file in a directory, in name order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(tokenizer.get_vocab())
    # Templates render {bos}/{eos} from these attributes, which the backend's JSON does not record.
    text += json.dumps([tokenizer.bos_token, tokenizer.eos_token])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def template_fingerprint(template: Template) -> str:
    return hashlib.sha256(template.to_jinja().encode()).hexdigest()[:16]


@dataclass
class EncodeStats:
    conversations: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    truncated: int = 0
    dropped_no_supervised: int = 0
    boundary_tokens: int = 0
    boundary_conversations: int = 0
    special_in_content: int = 0
    lengths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out.pop("lengths")
        return out


def encode_with_report(
    conversations: Sequence[Conversation],
    template: Template,
    tokenizer,
    max_length: int,
    strategy: str,
    report: ValidationReport,
    batch_size: int = 1000,
    special_policy: str = "warn",
):
    """Encode in batches, adding truncation / no-supervised-token / special-token issues to `report`.

    Returns (rows, stats); each row is a dict with input_ids, labels, length, id.
    """
    from tqdm.auto import tqdm

    from .special_content import find_special, special_strings

    strings = special_strings(tokenizer)

    rows, stats = [], EncodeStats()
    # A bar only when there is something to wait for (and never in tests' tiny files).
    bar = tqdm(
        total=len(conversations), desc="tokenizing", unit="conv", disable=len(conversations) < 5 * batch_size
    )
    for start in range(0, len(conversations), batch_size):
        bar.update(min(batch_size, len(conversations) - start))
        chunk = conversations[start : start + batch_size]
        found = [_special_issue(c, strings, special_policy, find_special) for c in chunk]
        for issue in filter(None, found):
            report.add(issue)
            stats.special_in_content += 1
            if issue.severity == "error":
                report.skipped_ids.append(issue.record_id)
        chunk = [
            c for c, issue in zip(chunk, found, strict=True) if issue is None or issue.severity != "error"
        ]
        encoded = encode_conversations(chunk, template, tokenizer, max_length, strategy, special_policy)
        for conv, enc in zip(chunk, encoded, strict=True):
            if enc.truncated:
                stats.truncated += 1
                report.add(
                    Issue(
                        *_location(conv),
                        "truncated",
                        f"{enc.full_length} tokens > model_max_length {max_length}",
                        record_id=conv.id,
                        severity="warning",
                    )
                )
            n_sup = enc.n_supervised
            if n_sup == 0:
                stats.dropped_no_supervised += 1
                report.add(
                    Issue(
                        *_location(conv),
                        "no_supervised_tokens",
                        f"no reply token left within {max_length} tokens"
                        if enc.truncated
                        else "no reply token",
                        record_id=conv.id,
                        severity="error",
                    )
                )
                report.skipped_ids.append(conv.id)
                continue
            stats.conversations += 1
            stats.tokens += len(enc.input_ids)
            stats.supervised_tokens += n_sup
            stats.boundary_tokens += enc.boundary_tokens
            if enc.boundary_tokens:
                stats.boundary_conversations += 1
                report.add(
                    Issue(
                        *_location(conv),
                        "boundary_token",
                        boundary_detail(enc),
                        record_id=conv.id,
                        severity="warning",
                    )
                )
            stats.lengths.append(len(enc.input_ids))
            rows.append(
                {
                    "input_ids": enc.input_ids,
                    "labels": enc.labels,
                    "length": len(enc.input_ids),
                    "id": conv.id,
                    "group": conv.extra.get("group", conv.id),
                }
            )
    bar.close()
    return rows, stats


def _location(conv) -> tuple[str, int]:
    file, _, index = conv.source.rpartition("#")
    return (file or conv.source), int(index) if index.isdigit() else -1


def _special_issue(conv, strings, policy: str, find_special) -> Issue | None:
    """A special-token string in any message: an error under `error`, else a warning."""
    # Most conversations hold none: one scan of all their text clears them (a hit that spans two
    # messages only sends the conversation through the per-message scan, which finds nothing).
    if not find_special("\0".join(m.content for m in conv.messages), strings):
        return None
    hits = {n: find_special(m.content, strings) for n, m in enumerate(conv.messages)}
    hits = {n: h for n, h in hits.items() if h}
    if not hits:
        return None
    file, index = _location(conv)
    effect = {
        "split": "kept as plain text (--special_tokens_in_content split)",
        "warn": "they become control tokens; --special_tokens_in_content split keeps them as text, error refuses",
        "error": "refused (--special_tokens_in_content error or --strict); split keeps them as plain text",
    }[policy]
    where = "; ".join(f"message {n} ({conv.messages[n].role}) has {h[:3]}" for n, h in hits.items())
    severity = "error" if policy == "error" else "warning"
    return Issue(
        file, index, "special_token_in_content", f"{where}: {effect}", record_id=conv.id, severity=severity
    )


def boundary_detail(enc, limit: int = 2) -> str:
    """Which tokens straddle a reply's start, shown as 'prompt part|reply part'."""
    shown = []
    for s, _ in enc.spans:
        for a, b in enc.offsets:
            if a < s < b and len(shown) < limit:
                shown.append(f"{enc.text[a:s]}|{enc.text[s:b]}")
    more = f" (+{enc.boundary_tokens - len(shown)} more)" if enc.boundary_tokens > len(shown) else ""
    return (
        f"{enc.boundary_tokens} token(s) span the prompt/reply boundary, e.g. {', '.join(map(repr, shown))}{more}; "
        "they are context, so the reply's first characters are not trained (the reply's start merges with "
        "the end of the prompt; stripping leading whitespace from replies usually avoids it)"
    )


def group_hash(seed: int, group: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(f"{seed}\x00{group}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def split_by_group(dataset, eval_ratio: float, seed: int):
    """Hold out whole conversation groups, as `llama-sft data split` does: the pieces `data split-long`
    cuts from one conversation share a group (their `parent_id`), so none of them is trained on while
    another is evaluated. Groups are taken by smallest blake2b(seed, group) hash until the eval side
    holds round(eval_ratio x rows) rows (at least one). Returns (train, eval)."""
    groups = dataset["group"] if "group" in dataset.column_names else dataset["id"]
    rows_by_group: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        rows_by_group.setdefault(str(group), []).append(row)
    want = max(1, round(eval_ratio * len(dataset)))
    held: list[int] = []
    for group in sorted(rows_by_group, key=lambda g: group_hash(seed, g)):
        if len(held) >= want:
            break
        held += rows_by_group[group]
    if len(held) >= len(dataset):
        raise ValueError(
            f"--eval_ratio {eval_ratio}: the data has {len(rows_by_group)} conversation group(s); holding out "
            "whole groups leaves nothing to train on. Lower --eval_ratio or pass --eval_data_path"
        )
    keep = sorted(set(range(len(dataset))) - set(held))
    return dataset.select(keep), dataset.select(sorted(held))


def cache_key(
    paths: Sequence[str | Path],
    tokenizer,
    template: Template,
    max_length: int,
    strategy: str,
    extra: str = "",
) -> str:
    parts = {
        "version": CACHE_VERSION,
        "data": [file_fingerprint(p) for p in paths],
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "template": template_fingerprint(template),
        "max_length": max_length,
        "strategy": strategy,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def build_dataset(
    paths: Sequence[str | Path],
    tokenizer,
    template: Template,
    max_length: int,
    strategy: str = "train_on_assistant",
    data_format: str = "auto",
    skip_bad: bool = False,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    num_workers: int = 1,
    use_cache: bool = True,
    special_policy: str = "warn",
):
    """Load, validate, encode and cache. Returns (datasets.Dataset, ValidationReport, stats dict)."""
    import datasets

    from .validate import load_conversations

    special_policy = "error" if strict and special_policy == "warn" else special_policy
    key = cache_key(
        paths,
        tokenizer,
        template,
        max_length,
        strategy,
        f"{data_format}|{skip_bad}|{strict}|{special_policy}",
    )
    target = Path(cache_dir or default_cache_dir()) / key
    if use_cache and (target / "meta.json").exists():
        meta = json.loads((target / "meta.json").read_text())
        report = ValidationReport(
            records_read=meta["records_read"],
            records_kept=meta["records_kept"],
            skipped_ids=meta.get("skipped_ids", []),
        )
        report.issues = [Issue(**i) for i in meta["issues"]]
        return (
            datasets.load_from_disk(str(target / "data")),
            report,
            meta["stats"] | {"cache": "hit", "cache_path": str(target)},
        )

    conversations, report = load_conversations(
        paths, data_format, strict=strict, skip_bad=skip_bad, template_name=None
    )
    if num_workers > 1 and len(conversations) > 2000:
        rows, stats = _encode_parallel(
            conversations, template, tokenizer, max_length, strategy, report, num_workers, special_policy
        )
    else:
        rows, stats = encode_with_report(
            conversations, template, tokenizer, max_length, strategy, report, special_policy=special_policy
        )
    if (stats.dropped_no_supervised or report.errors) and not skip_bad:
        raise DataError(report)
    if not rows:
        raise (
            DataError(report)
            if report.errors
            else ValueError(f"no usable conversations in {list(map(str, paths))}")
        )
    dataset = datasets.Dataset.from_list(rows)
    summary = stats.to_dict()
    if use_cache:
        meta = {
            "records_read": report.records_read,
            "records_kept": report.records_kept,
            "stats": summary,
            "issues": [i.__dict__ for i in report.issues],
            "skipped_ids": report.skipped_ids,
            "built_by": {"host": __import__("socket").gethostname(), "rank": os.environ.get("RANK", "0")},
        }
        publish_cache(target, lambda tmp: _save_quietly(dataset, tmp / "data"), meta)
        dataset = datasets.load_from_disk(str(target / "data"))
    return dataset, report, summary | {"cache": "miss" if use_cache else "off", "cache_path": str(target)}


def _save_quietly(dataset, path: Path) -> None:
    """A progress bar for writing a cache the user never asked about is noise."""
    import datasets

    quiet = not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        dataset.save_to_disk(str(path))
    finally:
        if quiet:
            datasets.enable_progress_bars()


def publish_cache(target: Path, write_data, meta: dict) -> None:
    """Write a cache entry in a private temporary directory, then rename it into place: a reader (another
    rank, another node on a shared filesystem) sees either no entry or a complete one, never a
    half-written one. When two writers race, the first rename wins and the loser's copy is removed."""
    import shutil
    import socket

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_data(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta))
        if target.exists() and not (target / "meta.json").exists():
            shutil.rmtree(target)  # left half-written by a version that wrote in place
        try:
            os.rename(tmp, target)  # atomic on POSIX; fails when the target already exists
        except OSError:
            if not (target / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _encode_chunk(args):
    conversations, template, tokenizer_json, specials, max_length, strategy, special_policy = args
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=__import__("tokenizers").Tokenizer.from_str(tokenizer_json), **specials
    )
    report = ValidationReport()
    rows, stats = encode_with_report(
        conversations, template, tokenizer, max_length, strategy, report, special_policy=special_policy
    )
    return rows, stats, report


def _encode_parallel(
    conversations, template, tokenizer, max_length, strategy, report, num_workers, special_policy="warn"
):
    """Tokenize in worker processes; the tokenizer travels as its JSON so workers need no hub."""
    from concurrent.futures import ProcessPoolExecutor

    specials = {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    size = (len(conversations) + num_workers - 1) // num_workers
    chunks = [conversations[i : i + size] for i in range(0, len(conversations), size)]
    rows, stats = [], EncodeStats()
    with ProcessPoolExecutor(num_workers) as pool:
        for part_rows, part_stats, part_report in pool.map(
            _encode_chunk,
            [(c, template, tokenizer_json, specials, max_length, strategy, special_policy) for c in chunks],
        ):
            rows += part_rows
            report.issues += part_report.issues
            report.skipped_ids += part_report.skipped_ids
            for k in (
                "conversations",
                "tokens",
                "supervised_tokens",
                "truncated",
                "dropped_no_supervised",
                "boundary_tokens",
                "boundary_conversations",
                "special_in_content",
            ):
                setattr(stats, k, getattr(stats, k) + getattr(part_stats, k))
            stats.lengths += part_stats.lengths
    return rows, stats
