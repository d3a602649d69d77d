"""Problems found in input data, and the report that counts them.

Every record that is changed or skipped leaves an `Issue` here, so nothing is ever dropped
without being counted and shown to the user with its file, record and reason.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .tools import TOOL_ERROR_REASONS

# Reasons that make a record unusable as it is.
ERROR_REASONS = {
    "malformed_json": "the line or file is not valid JSON",
    "invalid_utf8": "the bytes are not valid UTF-8",
    "unknown_shape": "the record is not ShareGPT, OpenAI or Alpaca shaped",
    "unknown_role": "a turn has a role we do not know",
    "empty_content": "a turn's content is empty",
    "non_string_content": "a turn's content is not a string",
    "misplaced_system": "a system message appears after the first turn",
    "not_alternating": "user and assistant turns do not alternate",
    "no_assistant_turn": "there is no assistant turn to learn from",
    "no_supervised_tokens": "after truncation no token is left to learn from",
    # With --special_tokens_in_content error (or --strict) this is an error; else a warning.
    "special_token_in_content": "content holds a special-token string of the tokenizer (e.g. </s>)",
}
# Repairs we apply by default (errors under --strict).
REPAIR_REASONS = {
    "leading_assistant_dropped": "a leading assistant turn was dropped",
    "trailing_user_dropped": "a trailing user turn was dropped (nothing answers it)",
}
# Worth knowing, never changes the record.
WARNING_REASONS = {
    "control_string": "content contains a template control string (it will be tokenized as such)",
    "truncated": "the conversation is longer than model_max_length and was truncated",
    "boundary_token": "a token spans the prompt/reply boundary: it is context, so its reply part is never trained",
}
# Tool-calling records (data/tools.py), kept there with the rules that raise them.
ERROR_REASONS.update(TOOL_ERROR_REASONS)
ALL_REASONS = {**ERROR_REASONS, **REPAIR_REASONS, **WARNING_REASONS}


@dataclass(frozen=True)
class Issue:
    file: str
    index: int
    reason: str
    detail: str = ""
    line: int | None = None
    record_id: str | None = None
    severity: str = "error"  # error | warning

    def location(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        # A record without an id of its own gets its index as id; repeating it would read like a file id.
        rid = f" (id {self.record_id})" if self.record_id not in (None, "", str(self.index)) else ""
        return f"{where} record {self.index}{rid}"

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.severity}: {self.location()}: {self.reason}{detail}"


class DataError(Exception):
    """Raised when the input has errors and the policy is to stop; carries the full report."""

    def __init__(self, report: ValidationReport, shown: int = 20):
        self.report = report
        super().__init__(report.format(shown=shown, errors_only=True))


@dataclass
class ValidationReport:
    issues: list[Issue] = field(default_factory=list)
    records_read: int = 0
    records_kept: int = 0
    skipped_ids: list[str] = field(default_factory=list)

    def add(self, issue: Issue) -> None:
        self.issues.append(issue)

    def extend(self, other: ValidationReport) -> None:
        self.issues.extend(other.issues)
        self.records_read += other.records_read
        self.records_kept += other.records_kept
        self.skipped_ids.extend(other.skipped_ids)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def counts(self, severity: str | None = None) -> Counter:
        return Counter(i.reason for i in self.issues if severity is None or i.severity == severity)

    def examples(self, reason: str, limit: int = 3) -> list[str]:
        return [i.location() for i in self.issues if i.reason == reason][:limit]

    def summary_rows(self) -> list[tuple[str, str, int, list[str]]]:
        """(severity, reason, count, example locations) for each reason seen, errors first."""
        by_reason: dict[tuple[str, str], list[Issue]] = defaultdict(list)
        for issue in self.issues:
            by_reason[(issue.severity, issue.reason)].append(issue)
        rows = [
            (sev, reason, len(items), [i.location() for i in items[:3]])
            for (sev, reason), items in by_reason.items()
        ]
        return sorted(rows, key=lambda r: (r[0] != "error", -r[2], r[1]))

    def format(self, shown: int = 20, errors_only: bool = False) -> str:
        issues = self.errors if errors_only else self.issues
        lines = [str(i) for i in issues[:shown]]
        if len(issues) > shown:
            lines.append(f"... and {len(issues) - shown} more")
        lines.append(
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) in {self.records_read} record(s); "
            + ", ".join(f"{reason}: {n}" for (_, reason, n, _) in self.summary_rows())
        )
        if errors_only and self.errors:
            lines.append(
                "Fix the records above, or pass --skip_bad to skip them (they are counted and reported)."
            )
        return "\n".join(lines)
