"""`data clean`: HTML to Markdown, whitespace, empty and non-alternating turns, and optional filters.

The structural rules are the validator's (`data.validate.check_turns`): one leading system
message, user/assistant alternation, a leading assistant turn or a trailing user turn dropped,
at least one reply. Cleaning only makes more records pass them: an empty turn goes together
with the turn it pairs with (a reply to nothing, or a question left unanswered), and
consecutive turns of one role are merged only when asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from llama_sft.data.formats import RecordError
from llama_sft.data.validate import check_turns

from .records import Chat, Turn, to_sharegpt
from .stream import Run

# Content is treated as HTML only when it *starts* with a tag, as chat exports write replies;
# a question that mentions `<div>` in passing is left alone.
_HTML_START = re.compile(
    r"\s*<(?:p|div|span|br|hr|pre|code|ul|ol|li|h[1-6]|table|thead|tbody|tr|td|th|blockquote|a|b|i|em|strong|img"
    r"|section|article|dl|dt|dd)\b[^<>]*>",
    re.IGNORECASE,
)
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{4,}")  # more than two blank lines; two stay (PEP 8 code uses them)
_LANGUAGE_CLASS = re.compile(r"(?:^|\s)(?:language|lang)-([\w+#.-]+)")


def looks_like_html(text: str) -> bool:
    return _HTML_START.match(text) is not None


def _code_language(el) -> str:
    code = el.find("code") if el.name != "code" else el
    for node in (code, el):
        if node is not None:
            match = _LANGUAGE_CLASS.search(" ".join(node.get("class") or []))
            if match:
                return match.group(1)
    return ""


@lru_cache(maxsize=1)
def _converter():
    try:
        from markdownify import MarkdownConverter
    except ImportError:
        raise ImportError(
            "HTML conversion needs markdownify: pip install 'llama-sft[data]' (or pass --html off)"
        ) from None

    class ChatExportConverter(MarkdownConverter):
        """markdownify, plus what ChatGPT-style exports need: code blocks take only the `<code>` text
        (not the language label and "Copy code" button drawn above it), and no UI widgets."""

        def convert_pre(self, el, text, parent_tags):
            code = el.find("code")
            if code is not None:
                text = code.get_text()
            return super().convert_pre(el, text, parent_tags)

        def convert_button(self, el, text, parent_tags):
            return ""

        convert_svg = convert_button

        def convert_br(self, el, text, parent_tags):
            return "\n"

    return ChatExportConverter(
        heading_style="atx",
        bullets="-",
        escape_underscores=False,
        escape_asterisks=False,
        escape_misc=False,
        code_language_callback=_code_language,
    )


def html_to_markdown(text: str) -> str:
    return _converter().convert(text)


def normalize_whitespace(text: str) -> str:
    """LF line ends, no trailing spaces, no NBSP / zero-width space / BOM, <= 2 blank lines in a row, stripped."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u00a0", " ").replace("\u200b", "").replace("\ufeff", "")
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUN.sub("\n\n\n", text)
    return text.strip()


@dataclass
class CleanOptions:
    html: str = "assistant"  # which turns may hold HTML: assistant | all | off
    merge_consecutive: bool = False  # merge consecutive same-role turns instead of dropping the record
    drop_patterns: tuple[str, ...] = ()  # regexes, matched case-insensitively against replies
    languages: tuple[str, ...] = ()  # ISO 639-1 codes to keep (needs py3langid)
    rename: dict[str, str] = field(default_factory=dict)  # raw role name -> role name

    def __post_init__(self) -> None:
        if self.html not in ("assistant", "all", "off"):
            raise ValueError(f"html must be assistant, all or off, got {self.html!r}")
        for pattern in self.drop_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"--drop-pattern {pattern!r} is not a valid regular expression: {exc}"
                ) from None


@dataclass
class Cleaned:
    chat: Chat | None
    changes: list[str]
    dropped: tuple[str, str] | None = None  # (reason, detail)


def detect_language(text: str) -> str:
    try:
        import py3langid
    except ImportError:
        raise ImportError("--lang needs the py3langid package: pip install py3langid") from None
    return py3langid.classify(text)[0]


class Cleaner:
    def __init__(self, options: CleanOptions):
        self.options = options
        self.patterns = [(p, re.compile(p, re.IGNORECASE)) for p in options.drop_patterns]
        self.languages = set(options.languages)
        self.seen_languages: dict[str, int] = {}

    def _text(self, turn: Turn, changes: list[str]) -> str:
        text = turn.content
        html_ok = self.options.html == "all" or (
            self.options.html == "assistant" and turn.role == "assistant"
        )
        if html_ok and looks_like_html(text):
            _add(changes, "html_to_markdown")  # its whitespace tidying is part of the conversion
            return normalize_whitespace(html_to_markdown(text))
        normalized = normalize_whitespace(text)
        if normalized != text and normalized:  # a turn left empty is counted as an empty turn instead
            _add(changes, "whitespace_normalized")
        return normalized

    def clean(self, chat: Chat) -> Cleaned:
        changes: list[str] = []
        turns = [Turn(t.role, self._text(t, changes), t.extra) for t in chat.turns]
        turns = self._drop_empty(turns, changes)
        try:
            turns = self._alternate(turns, changes)
            turns = self._check(turns, changes)
        except RecordError as exc:
            return Cleaned(None, changes, (exc.reason, exc.detail))
        for pattern, regex in self.patterns:
            if any(t.role == "assistant" and regex.search(t.content) for t in turns):
                return Cleaned(None, changes, ("pattern_matched", pattern))
        if self.languages:
            sample = "\n".join(t.content for t in turns if t.role != "system")[:2000]
            language = detect_language(sample)
            self.seen_languages[language] = self.seen_languages.get(language, 0) + 1
            if language not in self.languages:
                return Cleaned(None, changes, ("wrong_language", language))
        return Cleaned(chat.derive(turns), changes)

    @staticmethod
    def _drop_empty(turns: list[Turn], changes: list[str]) -> list[Turn]:
        keep = [True] * len(turns)
        for n, turn in enumerate(turns):
            if turn.content:
                continue
            keep[n] = False
            if turn.role == "system":
                _add(changes, "empty_system_dropped")
                continue
            partner = n - 1 if turn.role == "assistant" else n + 1
            partner_role = "user" if turn.role == "assistant" else "assistant"
            if 0 <= partner < len(turns) and turns[partner].role == partner_role:
                keep[partner] = False
            _add(changes, "empty_round_dropped")
        return [t for t, k in zip(turns, keep, strict=True) if k]

    def _alternate(self, turns: list[Turn], changes: list[str]) -> list[Turn]:
        out: list[Turn] = []
        for n, turn in enumerate(turns):
            if out and turn.role == out[-1].role and turn.role != "system":
                if not self.options.merge_consecutive:
                    raise RecordError(
                        "not_alternating",
                        f"turn {n} is a second {turn.role} turn in a row (see --merge-consecutive)",
                    )
                out[-1] = Turn(turn.role, f"{out[-1].content}\n\n{turn.content}", out[-1].extra)
                _add(changes, "consecutive_merged")
            else:
                out.append(turn)
        return out

    @staticmethod
    def _check(turns: list[Turn], changes: list[str]) -> list[Turn]:
        """The validator's rules; its repairs keep the system and one contiguous run of the dialogue."""
        kept, repairs = check_turns([(t.role, t.content) for t in turns])
        system = 1 if turns and turns[0].role == "system" else 0
        lead = 0
        while system + lead < len(turns) and turns[system + lead].role == "assistant":
            lead += 1
        out = turns[:system] + turns[system + lead : system + lead + len(kept) - system]
        assert [t.role for t in out] == [role for role, _ in kept]
        for reason, _ in repairs:
            _add(changes, reason)
        return out


def _add(changes: list[str], reason: str) -> None:
    if reason not in changes:
        changes.append(reason)


def run_clean(run: Run, options: CleanOptions) -> int:
    cleaner = Cleaner(options)
    summary = run.summary
    for raw in run.raw_records():
        chat, notes = run.parse(raw, options.rename)
        if chat is None:
            continue
        result = cleaner.clean(chat)
        if result.dropped is not None:
            summary.note("dropped", result.dropped[0], chat.id)
            continue
        changes = notes + result.changes
        for reason in changes:
            summary.note("changed", reason, chat.id)
        summary.changed += bool(changes)
        run.write(to_sharegpt(result.chat))
    if cleaner.seen_languages:
        summary.extra["languages"] = dict(sorted(cleaner.seen_languages.items(), key=lambda kv: -kv[1])[:10])
    return run.finish()
