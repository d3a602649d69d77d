"""The closing summary of a data tool: records read and written, and every change counted by reason.

Memory stays flat: a count and a few example ids per reason, never the records themselves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from llama_sft.data.issues import ERROR_REASONS, REPAIR_REASONS

# Why a record was changed or dropped, shown next to each count.
REASONS = {
    **ERROR_REASONS,
    **REPAIR_REASONS,
    "role_renamed": "a role was renamed by --rename-role",
    "content_parts_joined": "OpenAI content parts were joined into one string",
    "html_to_markdown": "HTML was converted to Markdown",
    "whitespace_normalized": "line endings, trailing spaces, long blank-line runs or outer whitespace were normalized",
    "empty_round_dropped": "an empty turn was dropped together with the turn it pairs with",
    "empty_system_dropped": "an empty system message was dropped",
    "consecutive_merged": "consecutive turns of one role were merged (--merge-consecutive)",
    "pattern_matched": "a reply matches --drop-pattern",
    "wrong_language": "the language is not one of --lang",
    "split": "split into pieces of whole rounds that each fit --max-length",
    "round_too_long": "a single round is longer than --max-length on its own and was dropped (--long-round drop)",
    "round_truncated": "a single round was longer than --max-length; its reply was cut to fit (--long-round truncate)",
    "prompt_too_long": "system and user turn alone exceed --max-length, so the round was dropped",
    "exact_duplicate": "same normalized content as an earlier record",
    "near_duplicate": "MinHash similarity to an earlier record is at least --threshold",
    "multi_turn": "more than one round, which Alpaca cannot hold (use --flatten)",
    "turn_fields": "per-turn fields that Alpaca cannot hold (use --flatten to drop them)",
    "not_user_assistant_pairs": "the turns are not user/assistant pairs (run `llama-sft data clean` first)",
    "flattened": "written as one Alpaca record per round (--flatten)",
    "turn_fields_dropped": "per-turn fields were dropped to fit Alpaca (--flatten)",
    "not_sampled": "not picked for the mix",
    "tool_calls": "tool calls and results, which Alpaca cannot hold",
    "tool_format_converted": "tool calls and results rewritten in the target format's own shape",
    "repeated": "written more than once because its source has fewer records than its share (--repeat)",
}
ACTIONS = ("error", "dropped", "changed")


@dataclass
class Summary:
    command: str
    max_examples: int = 3
    read: int = 0
    written: int = 0
    changed: int = 0  # records written with at least one change
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # command-specific results (clusters, sources, splits)
    started: float = field(default_factory=time.perf_counter)
    started_cpu: float = field(default_factory=time.process_time)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # all threads of this process (the tokenizer runs several)

    def note(self, action: str, reason: str, example: str) -> None:
        key = (action, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        shown = self.examples.setdefault(key, [])
        if len(shown) < self.max_examples:
            shown.append(example)

    def total(self, action: str) -> int:
        return sum(n for (a, _), n in self.counts.items() if a == action)

    @property
    def errors(self) -> int:
        return self.total("error")

    def count(self, reason: str) -> int:
        return sum(n for (_, r), n in self.counts.items() if r == reason)

    def finish(self) -> Summary:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.started_cpu
        return self

    def rows(self) -> list[dict]:
        rows = [
            {
                "action": a,
                "reason": r,
                "records": n,
                "why": REASONS.get(r, ""),
                "examples": self.examples[(a, r)],
            }
            for (a, r), n in self.counts.items()
        ]
        return sorted(rows, key=lambda row: (ACTIONS.index(row["action"]), -row["records"], row["reason"]))

    def headline(self, wrote_nothing: bool = False) -> str:
        dropped = self.total("dropped")
        rate = f", {self.read / self.seconds:,.0f} records/s" if self.seconds > 0 else ""
        errors = f", {self.errors} with errors" if self.errors else ""
        return (
            f"{self.command}: read {self.read:,}, {'would write' if wrote_nothing else 'wrote'} {self.written:,} "
            f"({self.changed:,} changed), "
            f"dropped {dropped:,}{errors} in {self.seconds:.1f}s{rate}"
        )

    def to_dict(self) -> dict:
        return {
            "command": self.command,
            "read": self.read,
            "written": self.written,
            "changed": self.changed,
            "dropped": self.total("dropped"),
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "reasons": self.rows(),
            **self.extra,
        }

    def write_json(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, ensure_ascii=False)
            handle.write("\n")

    def print(self, console=None, dry_run: bool = False) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = console or Console(stderr=True, highlight=False)
        if not console.is_terminal:
            console.width = max(console.width, 140)  # logs: one row per reason rather than wrapped cells
        title = escape(
            self.headline(wrote_nothing=dry_run or self.errors > 0)
            + (" (dry run: nothing written)" if dry_run else "")
        )
        if not self.counts:
            console.print(title + "; nothing to change")
            return
        table = Table(title=title, title_justify="left")
        for column in ("action", "reason", "records", "why", "examples"):
            table.add_column(
                column,
                justify="right" if column == "records" else "left",
                no_wrap=column != "why" and column != "examples",
            )
        for row in self.rows():
            colour = {"error": "red", "dropped": "yellow", "changed": "cyan"}[row["action"]]
            table.add_row(
                f"[{colour}]{row['action']}[/]",
                escape(row["reason"]),
                f"{row['records']:,}",
                escape(row["why"]),
                escape("; ".join(row["examples"])),
            )
        console.print(table)
