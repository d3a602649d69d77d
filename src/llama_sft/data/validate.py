"""Turn raw records into checked `Conversation`s, applying the repair and error policy.

Default policy: collect every problem, then stop with the full list if any record has an error.
`skip_bad=True` skips bad records instead; `strict=True` turns repairs into errors. Either way
each skipped or repaired record is in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from .formats import RawRecord, RecordError, iter_records, record_id, record_to_messages
from .issues import DataError, Issue, ValidationReport
from .messages import Conversation, Message
from .tools import is_tool_record, read_checked


def check_turns(
    pairs: list[tuple[str, str]], strict: bool = False
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Apply the conversation rules. Returns (repaired pairs, [(repair_reason, detail)]).

    Raises RecordError for anything that cannot be repaired (or any repair when strict).
    """
    repairs: list[tuple[str, str]] = []
    system = []
    if pairs and pairs[0][0] == "system":
        system, pairs = [pairs[0]], pairs[1:]
    for n, (role, _) in enumerate(pairs):
        if role == "system":
            raise RecordError(
                "misplaced_system", f"turn {n + len(system)} is a system message; only the first may be"
            )
    dropped = 0
    while pairs and pairs[0][0] == "assistant":
        pairs = pairs[1:]
        dropped += 1
    if dropped:
        repairs.append(("leading_assistant_dropped", f"{dropped} leading assistant turn(s)"))
    for n, (role, _) in enumerate(pairs):
        expected = "user" if n % 2 == 0 else "assistant"
        if role != expected:
            raise RecordError(
                "not_alternating", f"turn {n + len(system) + dropped} is {role}, expected {expected}"
            )
    if pairs and pairs[-1][0] == "user":
        pairs = pairs[:-1]
        repairs.append(("trailing_user_dropped", "last turn was a user turn"))
    if not any(role == "assistant" for role, _ in pairs):
        raise RecordError("no_assistant_turn", "no assistant turn left to learn from")
    if strict and repairs:
        reason, detail = repairs[0]
        raise RecordError(reason, detail + " (an error under --strict)")
    return system + pairs, repairs


def _control_strings(template_name: str | None) -> tuple[str, ...]:
    from .templates import all_control_strings, get_template

    if template_name is None:
        return all_control_strings()
    try:
        return get_template(template_name).control_strings()
    except (KeyError, ValueError, FileNotFoundError):
        return all_control_strings()


def conversations_from_records(
    records: Iterable[RawRecord],
    report: ValidationReport,
    data_format: str = "auto",
    strict: bool = False,
    template_name: str | None = None,
) -> Iterator[Conversation]:
    """Yield good conversations; every problem goes into `report`."""
    controls = _control_strings(template_name)
    for rec in records:
        report.records_read += 1
        rid = record_id(rec.data, rec.index) if rec.error is None else None

        def issue(
            reason: str, detail: str, severity: str, rec: RawRecord = rec, rid: str | None = rid
        ) -> Issue:
            return Issue(rec.file, rec.index, reason, detail, rec.line, rid, severity)

        try:
            if rec.error is not None:
                raise rec.error
            if is_tool_record(rec.data):
                messages, tools, repairs = read_checked(rec.data, data_format, strict)
                pairs = [(m.role, m.content) for m in messages]
            else:
                pairs, repairs = check_turns(record_to_messages(rec.data, data_format), strict=strict)
                messages, tools = [Message(role, content) for role, content in pairs], ()
        except RecordError as exc:
            report.add(issue(exc.reason, exc.detail, "error"))
            report.skipped_ids.append(rid if rid is not None else f"{rec.file}#{rec.index}")
            continue
        for reason, detail in repairs:
            report.add(issue(reason, detail, "warning"))
        for n, (_, content) in enumerate(pairs):
            found = [c for c in controls if c in content]
            if found:
                report.add(issue("control_string", f"turn {n} contains {found[:3]}", "warning"))
        report.records_kept += 1
        parent = rec.data.get("parent_id") if isinstance(rec.data, dict) else None
        yield Conversation(
            messages=messages,
            id=rid or str(rec.index),
            source=f"{rec.file}#{rec.index}",
            tools=tools,
            # Pieces `data split-long` cut from one conversation name it as parent_id: one group.
            extra={"group": str(parent)} if isinstance(parent, (str, int)) and parent != "" else {},
        )


def load_conversations(
    paths: str | Path | Iterable[str | Path],
    data_format: str = "auto",
    strict: bool = False,
    skip_bad: bool = False,
    template_name: str | None = None,
) -> tuple[list[Conversation], ValidationReport]:
    """Read and check files. Raises DataError listing every error unless `skip_bad`."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    report = ValidationReport()
    conversations: list[Conversation] = []
    for path in paths:
        conversations.extend(
            conversations_from_records(iter_records(path), report, data_format, strict, template_name)
        )
    if report.errors and not skip_bad:
        raise DataError(report)
    return conversations, report
