"""`llama-sft data validate|stats|inspect` (and the data tools, when installed)."""

from __future__ import annotations

import importlib
import json
import sys

from .common import add_data_arguments, describe_tokenizer, parse_index, resolve_tokenizer


def register(subparsers) -> None:
    from .main import formatter

    data = subparsers.add_parser(
        "data",
        help="check, measure and look inside training data",
        description="Check, measure and look inside training data.",
        formatter_class=formatter(),
    )
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    p = sub.add_parser(
        "validate",
        help="report every problem with file, record and reason",
        formatter_class=formatter(),
        description="Read files and report every problem (file, record, line, reason). Exit 0 if usable, "
        "1 if any record has an error. With --tokenizer, also reports conversations over --model_max_length.",
    )
    p.add_argument("files", nargs="+")
    add_data_arguments(p, tokenizer=False, template=True)
    p.add_argument(
        "--tokenizer", default=None, help="also check lengths with this tokenizer ('tiny' for the built-in)"
    )
    p.add_argument("--model_max_length", type=int, default=2048)
    p.add_argument("--show", type=int, default=20, help="how many problems to list (all are counted)")
    p.add_argument("--json", action="store_true", help="print the issues as JSON lines")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "stats",
        help="lengths, supervised share, truncation, histogram",
        formatter_class=formatter(),
        description="Token statistics of a file as the model will see it: counts, length percentiles, "
        "supervised-token share, truncation counts, and a length histogram PNG.",
    )
    p.add_argument("files", nargs="+")
    add_data_arguments(p)
    p.add_argument(
        "--plot", default="length_histogram.png", help="where to write the histogram PNG ('' for none)"
    )
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "inspect",
        help="show the rendered prompt with supervised spans marked",
        formatter_class=formatter(),
        description="Print conversations as rendered by the template, supervised tokens highlighted "
        "(green in a terminal, between «» when piped). --json prints index, text, input_ids and labels.",
    )
    p.add_argument("file", nargs="?", default=None, help="data file (default: the built-in sample)")
    p.add_argument("--index", default="0", help="N, a range like 0:50, or all")
    add_data_arguments(p)
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line: index, id, text, input_ids, labels"
    )
    p.set_defaults(func=cmd_inspect)

    sub.add_parser(  # parses train's flags itself (main.py hands it the arguments); listed for --help
        "prepare",
        help="tokenize and cache once, before a multi-process train (train's flags)",
        description=PREPARE_USAGE,
        formatter_class=formatter(),
        add_help=False,
    )

    try:  # the data tools (clean, split-long, dedupe, convert, mix, split) register into the same group
        importlib.import_module("llama_sft.datatools.cli").register(sub)
    except ModuleNotFoundError as exc:
        if exc.name not in ("llama_sft.datatools", "llama_sft.datatools.cli"):
            raise
    data.set_defaults(func=lambda args: data.print_help())


PREPARE_USAGE = """\
llama-sft data prepare [CONFIG.yaml] [train's --flags]

Load, validate and tokenize the training (and eval) data exactly as `llama-sft train` would with the
same config and flags, and write the tokenized cache that train then only reads (same cache key:
data files' content, tokenizer, template, model_max_length, masking, data_format/skip_bad/strict).
Run it once before a multi-node job, with --data_cache_dir on storage all nodes share, so no rank
tokenizes while the others wait. Flags that do not concern data are accepted and ignored, so the
train command line works as it is. Exit 0 when the data is usable, 2 on errors (listed).

Examples:
  llama-sft data prepare configs/llama2-7b-qlora.yaml --data_path data.json --data_cache_dir /shared/cache
  llama-sft data prepare --model_name_or_path /models/llama-2-7b-hf --data_path data.json --model_max_length 4096
"""


def run_prepare(argv: list[str]) -> int:
    """`llama-sft data prepare`: train's parser, train's tokenizer and template, train's locked cache build."""
    from .errors import run_with_clean_errors

    if any(a in ("-h", "--help") for a in argv):
        print(PREPARE_USAGE)
        return 0
    config_file = None
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml")):
        config_file, argv = argv[0], argv[1:]

    def go() -> int:
        from rich.console import Console

        from ..config import ConfigError, parse_run_config
        from ..train.run import build_datasets, tokenizer_and_template

        run = parse_run_config(argv, config_file)
        if not run.model.model_name_or_path:
            raise ConfigError("no model: pass --model_name_or_path (its tokenizer defines the token ids)")
        tokenizer, template = tokenizer_and_template(run)
        train, evaluation, report, stats = build_datasets(run, tokenizer, template)
        print_report(report, show=20)
        console = Console(stderr=True, highlight=False)
        console.print(
            f"{len(train)} train and {len(evaluation) if evaluation is not None else 0} eval conversations, "
            f"{stats['tokens']} tokens ({stats['supervised_tokens']} supervised), {stats['truncated']} truncated; "
            f"cache {stats['cache']}: {stats['cache_path']}"
        )
        return 0

    return run_with_clean_errors(go)


def _load(args, template_name):
    from llama_sft.data.validate import load_conversations

    return load_conversations(
        args.files, args.data_format, strict=args.strict, skip_bad=args.skip_bad, template_name=template_name
    )


def print_report(report, show: int = 20, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(stderr=True)
    for issue in report.issues[:show]:
        colour = "red" if issue.severity == "error" else "yellow"
        console.print(
            f"[{colour}]{issue.severity}[/]: {issue.location()}: [bold]{issue.reason}[/] {issue.detail}",
            highlight=False,
            soft_wrap=True,
        )
    if len(report.issues) > show:
        console.print(f"... and {len(report.issues) - show} more (all counted below)")
    table = Table(title=f"{report.records_read} records read, {report.records_kept} usable")
    for col in ("severity", "reason", "count", "examples"):
        table.add_column(col)
    for severity, reason, count, examples in report.summary_rows():
        table.add_row(severity, reason, str(count), "; ".join(examples))
    console.print(table)


def cmd_validate(args) -> int:
    from llama_sft.data.dataset import encode_with_report
    from llama_sft.data.templates import get_template
    from llama_sft.data.validate import load_conversations

    # skip_bad: collect every problem into the report instead of raising on the first file's errors
    template_name = args.conv_template if args.conv_template != "tokenizer" else None
    conversations, report = load_conversations(
        args.files, args.data_format, strict=args.strict, skip_bad=True, template_name=template_name
    )
    if args.tokenizer:
        tokenizer = resolve_tokenizer(args.tokenizer)
        template = get_template(args.conv_template, tokenizer)
        encode_with_report(
            conversations,
            template,
            tokenizer,
            args.model_max_length,
            "train_on_assistant",
            report,
            special_policy="error" if args.strict else "warn",  # special-token strings in content
        )
    if args.json:
        for issue in report.issues:
            print(json.dumps(issue.__dict__, ensure_ascii=False))
    else:
        print_report(report, args.show)
    return 1 if report.errors else 0


def cmd_stats(args) -> int:
    import numpy as np

    from llama_sft.data.dataset import encode_with_report
    from llama_sft.data.templates import get_template

    tokenizer = resolve_tokenizer(args.tokenizer)  # before reading: a missing --tokenizer fails fast
    conversations, report = _load(args, None)
    template = get_template(args.conv_template, tokenizer)
    policy = (
        "error"
        if args.strict and args.special_tokens_in_content == "warn"
        else args.special_tokens_in_content
    )
    _, stats = encode_with_report(
        conversations, template, tokenizer, args.model_max_length, args.masking, report, special_policy=policy
    )
    lengths = np.asarray(stats.lengths or [0])
    pct = {f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)}
    result = {
        "tokenizer": describe_tokenizer(args.tokenizer, tokenizer),
        "records_read": report.records_read,
        "conversations": stats.conversations,
        "turns_mean": round(sum(len(c.turns) for c in conversations) / max(1, len(conversations)), 2),
        "tokens": stats.tokens,
        "supervised_tokens": stats.supervised_tokens,
        "supervised_share": round(stats.supervised_tokens / max(1, stats.tokens), 4),
        "length_mean": round(float(lengths.mean()), 1),
        "length_max": int(lengths.max()),
        **pct,
        "truncated": stats.truncated,
        "no_supervised_tokens": stats.dropped_no_supervised,
        "boundary_tokens": stats.boundary_tokens,
        "boundary_conversations": stats.boundary_conversations,
        "special_tokens_in_content": stats.special_in_content,
        "model_max_length": args.model_max_length,
        "skipped_records": len(report.skipped_ids),
    }
    if args.plot:
        plot_lengths(stats.lengths, args.model_max_length, args.plot)
        result["histogram"] = args.plot
    failed = int(any(i.severity == "error" and i.reason == "special_token_in_content" for i in report.issues))
    if args.json:
        print(json.dumps(result))
        return failed
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{', '.join(args.files)} as {args.conv_template}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)
    if report.issues:
        print_report(report, show=5)
    return failed


def plot_lengths(lengths, max_length: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lengths, bins=50, color="#4c72b0")
    ax.axvline(max_length, color="#c44e52", linestyle="--", label=f"model_max_length {max_length}")
    ax.set_xlabel("tokens per conversation (after truncation)")
    ax.set_ylabel("conversations")
    ax.set_title("Conversation lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_inspect(args) -> int:
    from llama_sft.data.encode import IGNORE_INDEX, encode_conversations
    from llama_sft.data.templates import get_template

    from .common import sample_data_path

    tokenizer = resolve_tokenizer(args.tokenizer)
    args.files = [args.file or str(sample_data_path())]
    conversations, report = _load(args, None)
    template = get_template(args.conv_template, tokenizer)
    indices = parse_index(args.index, len(conversations))
    chosen = [conversations[i] for i in indices]
    encoded = encode_conversations(
        chosen, template, tokenizer, args.model_max_length, args.masking, args.special_tokens_in_content
    )
    if args.json:
        for i, conv, enc in zip(indices, chosen, encoded, strict=False):
            print(
                json.dumps(
                    {
                        "index": i,
                        "id": conv.id,
                        "tokenizer": args.tokenizer,
                        "text": enc.text,
                        "input_ids": enc.input_ids,
                        "labels": enc.labels,
                    },
                    ensure_ascii=False,
                )
            )
        return 0
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)
    colour = sys.stdout.isatty()
    console.print(f"tokenizer: {describe_tokenizer(args.tokenizer, tokenizer)}", soft_wrap=True)
    for i, conv, enc in zip(indices, chosen, encoded, strict=False):
        supervised = [False] * len(enc.text)
        for (s, e), label in zip(enc.offsets, enc.labels, strict=True):
            if label != IGNORE_INDEX:
                for k in range(s, e):
                    supervised[k] = True
        header = (
            f"── record {i} (id {conv.id}) · {len(enc.input_ids)} tokens · {enc.n_supervised} supervised"
            + (f" · TRUNCATED from {enc.full_length}" if enc.truncated else "")
            + " ──"
        )
        console.print(header, style="bold" if colour else None)
        text = Text()
        k = 0
        while k < len(enc.text):
            j = k
            while j < len(enc.text) and supervised[j] == supervised[k]:
                j += 1
            chunk = enc.text[k:j]
            if supervised[k]:
                text.append(chunk, style="bold green") if colour else text.append(f"«{chunk}»")
            else:
                text.append(chunk, style="dim") if colour else text.append(chunk)
            k = j
        console.print(text, soft_wrap=True)
    legend = (
        "green = trained (labels), dim = context (masked)"
        if colour
        else "«…» = trained (labels), rest = context (masked)"
    )
    console.print(legend)
    return 0
