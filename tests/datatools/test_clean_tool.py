"""`llama-sft data clean`: exact outputs and counts on a small file with planted problems."""

from __future__ import annotations

import pytest
from ci import require_module
from dt_helpers import counts, read_jsonl, sharegpt

from llama_sft.datatools.clean import (
    Cleaner,
    CleanOptions,
    html_to_markdown,
    looks_like_html,
    normalize_whitespace,
)
from llama_sft.datatools.records import Chat, Turn

CHATGPT_HTML = (
    '<div class="markdown prose w-full break-words dark:prose-invert light"><p>Use <code>my_var</code> and '
    '<strong>2 * 3</strong>:</p><pre><div class="bg-black"><div class="flex"><span>python</span><button>'
    '<svg><path d="M1"></path></svg>Copy code</button></div><div class="p-4"><code class="hljs language-python">'
    "x = 2 * 3\nprint(x)\n</code></div></div></pre><ol><li>one</li><li>two<br>lines</li></ol></div>"
)
CHATGPT_MARKDOWN = (
    "Use `my_var` and **2 * 3**:\n\n```python\nx = 2 * 3\nprint(x)\n```\n\n1. one\n2. two\n   lines"
)

PLANTED = [
    sharegpt("html", ("human", "Show me"), ("gpt", CHATGPT_HTML)),
    sharegpt("space", ("human", "Hi  \r\nthere\n\n\n\n\nfriend "), ("gpt", "\u00a0Hello\u200b")),
    sharegpt("empty", ("human", "Q1"), ("gpt", ""), ("human", "Q2"), ("gpt", "A2")),
    sharegpt("emptyq", ("system", " "), ("human", ""), ("gpt", "A0"), ("human", "Q1"), ("gpt", "A1")),
    sharegpt("twice", ("human", "Q1"), ("human", "Q1 again"), ("gpt", "A")),
    sharegpt("refusal", ("human", "Q"), ("gpt", "As an AI language model, I cannot do that.")),
    sharegpt("lead", ("gpt", "Hello!"), ("human", "Q"), ("gpt", "A"), ("human", "unanswered")),
    sharegpt("bot", ("human", "Q"), ("bot", "A")),
    sharegpt("sys", ("human", "Q"), ("system", "late"), ("gpt", "A")),
    sharegpt("noreply", ("human", "Q"), ("gpt", " ")),
    sharegpt("fine", ("system", "Be brief."), ("human", "Q"), ("gpt", "A")),
    '{"id": "broken", "conversations": [',
]


def test_clean_planted_file_exact_output_and_counts(cli, jsonl, tmp_path):
    out = tmp_path / "clean.jsonl"
    code, report, err = cli(
        "clean", jsonl("raw.jsonl", PLANTED), "-o", out, "--drop-pattern", "as an ai language model"
    )
    assert code == 0, err
    assert read_jsonl(out) == [
        sharegpt("html", ("human", "Show me"), ("gpt", CHATGPT_MARKDOWN)),
        sharegpt("space", ("human", "Hi\nthere\n\n\nfriend"), ("gpt", "Hello")),
        sharegpt("empty", ("human", "Q2"), ("gpt", "A2")),
        sharegpt("emptyq", ("human", "Q1"), ("gpt", "A1")),
        sharegpt("lead", ("human", "Q"), ("gpt", "A")),
        sharegpt("fine", ("system", "Be brief."), ("human", "Q"), ("gpt", "A")),
    ]
    assert counts(report) == {
        "html_to_markdown": 1,
        "whitespace_normalized": 1,
        "empty_round_dropped": 2,
        "empty_system_dropped": 1,
        "leading_assistant_dropped": 1,
        "trailing_user_dropped": 1,
        "not_alternating": 1,
        "pattern_matched": 1,
        "unknown_role": 1,
        "misplaced_system": 1,
        "no_assistant_turn": 1,
        "malformed_json": 1,
    }
    assert (report["read"], report["written"], report["changed"], report["dropped"]) == (12, 6, 5, 6)
    rows = {row["reason"]: row for row in report["reasons"]}
    assert rows["pattern_matched"]["action"] == "dropped" and rows["pattern_matched"]["examples"] == [
        "refusal"
    ]
    assert rows["malformed_json"]["examples"] == [f"{tmp_path / 'raw.jsonl'}:12 record 11"]
    assert "clean: read 12, wrote 6 (5 changed), dropped 6" in err


def test_clean_merge_and_rename_options(cli, jsonl, tmp_path):
    out = tmp_path / "clean.jsonl"
    code, report, _ = cli(
        "clean",
        jsonl("raw.jsonl", PLANTED[4:5] + PLANTED[7:8]),
        "-o",
        out,
        "--merge-consecutive",
        "--rename-role",
        "BOT=assistant",
    )
    assert code == 0
    assert read_jsonl(out) == [
        sharegpt("twice", ("human", "Q1\n\nQ1 again"), ("gpt", "A")),
        sharegpt("bot", ("human", "Q"), ("gpt", "A")),
    ]
    assert counts(report) == {"consecutive_merged": 1, "role_renamed": 1}


def test_dry_run_writes_nothing_but_reports(cli, jsonl, tmp_path):
    out = tmp_path / "clean.jsonl"
    code, report, err = cli("clean", jsonl("raw.jsonl", PLANTED), "-o", out, "--dry-run")
    assert code == 0 and not out.exists() and not list(tmp_path.glob(".*partial"))
    assert report["written"] == 7 and "would write 7" in err and "(dry run: nothing written)" in err


def test_user_turns_quoting_html_are_left_alone_unless_asked(cli, jsonl, tmp_path):
    record = sharegpt(
        "q", ("human", "<div>hi</div> why is this not centered?"), ("gpt", "Use <b>flex</b>, like `<div>`.")
    )
    out = tmp_path / "out.jsonl"
    assert cli("clean", jsonl("raw.jsonl", [record]), "-o", out)[0] == 0
    assert read_jsonl(out) == [record]  # the reply does not *start* with a tag: prose that mentions tags
    assert cli("clean", jsonl("raw.jsonl", [record]), "-o", out, "--html", "all")[0] == 0
    assert read_jsonl(out)[0]["conversations"][0]["value"] == "hi\n\nwhy is this not centered?"


def test_html_conversion_keeps_code_and_identifiers():
    assert (
        looks_like_html(CHATGPT_HTML) and looks_like_html("  <p>x</p>") and not looks_like_html("a <b>b</b>")
    )
    assert not looks_like_html("<T> is a generic type")
    assert normalize_whitespace(html_to_markdown(CHATGPT_HTML)) == CHATGPT_MARKDOWN
    assert (
        html_to_markdown("<h2>Title</h2><p>snake_case and a*b</p>").strip()
        == "## Title\n\nsnake_case and a*b"
    )


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a\r\nb\rc", "a\nb\nc"),
        ("line  \nnext\t\n", "line\nnext"),
        (
            "def a():\n    pass\n\n\ndef b():\n    pass",
            "def a():\n    pass\n\n\ndef b():\n    pass",
        ),  # 2 blank lines stay
        ("a\n\n\n\n\n\nb", "a\n\n\nb"),
        ("\ufeff\u00a0x\u200by ", "xy"),
        ("  indented code", "indented code"),
    ],
)
def test_normalize_whitespace(raw, clean):
    assert normalize_whitespace(raw) == clean


def test_repairs_keep_per_turn_fields_aligned():
    chat = Chat(
        "x",
        [
            Turn("assistant", "hi", {"weight": 0}),
            Turn("user", "Q", {"name": "ann"}),
            Turn("assistant", "A", {"weight": 1}),
            Turn("user", "left"),
        ],
    )
    result = Cleaner(CleanOptions()).clean(chat)
    assert [(t.role, t.content, t.extra) for t in result.chat.turns] == [
        ("user", "Q", {"name": "ann"}),
        ("assistant", "A", {"weight": 1}),
    ]
    assert result.changes == ["leading_assistant_dropped", "trailing_user_dropped"]


def test_bad_drop_pattern_is_a_clear_error(cli, jsonl, tmp_path):
    code, _, err = cli(
        "clean", jsonl("raw.jsonl", PLANTED[:1]), "-o", tmp_path / "o.jsonl", "--drop-pattern", "("
    )
    assert code == 2 and "not a valid regular expression" in err


def test_language_filter(cli, jsonl, tmp_path):
    require_module("py3langid")
    records = [
        sharegpt(
            "en", ("human", "What is the capital of France?"), ("gpt", "The capital of France is Paris.")
        ),
        sharegpt(
            "de",
            ("human", "Was ist die Hauptstadt von Frankreich?"),
            ("gpt", "Die Hauptstadt von Frankreich ist Paris."),
        ),
    ]
    out = tmp_path / "out.jsonl"
    code, report, _ = cli("clean", jsonl("raw.jsonl", records), "-o", out, "--lang", "en")
    assert code == 0
    assert [r["id"] for r in read_jsonl(out)] == ["en"]
    assert counts(report) == {"wrong_language": 1} and report["languages"] == {"en": 1, "de": 1}
