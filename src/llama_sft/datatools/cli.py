"""`llama-sft data clean|split-long|dedupe|convert|mix|split`: flags, help and wiring to the tools.

Every multi-word flag takes dashes or underscores (`--max-length` or `--max_length`), matching
both the issue's spelling and the FastChat-style flags of `train`.
"""

from __future__ import annotations

import functools

COMMON_EPILOG = (
    "Reads JSONL, JSON, parquet or a dataset dir (ShareGPT, OpenAI or Alpaca records, detected per "
    "record); writes JSONL in ShareGPT form keeping each id. Prints a summary of every change by reason "
    "with example ids; --report also writes it as JSON."
)


def _flag(parser, name: str, *more: str, **kwargs):
    """Add `--a-b` together with its `--a_b` spelling."""
    names = [name, *more]
    if name.startswith("--") and "-" in name[2:]:
        names.append("--" + name[2:].replace("-", "_"))
    return parser.add_argument(*names, **kwargs)


def _common(
    parser,
    output: bool = True,
    skip_bad: bool = True,
    inputs: tuple[str, str] = ("FILE", "input files, read in order"),
) -> None:
    parser.add_argument("inputs", nargs="+", metavar=inputs[0], help=inputs[1])
    if output:
        parser.add_argument(
            "-o", "--output", help="output JSONL (written via a .partial file, renamed when done)"
        )
    _flag(
        parser, "--dry-run", action="store_true", help="write nothing; print the summary of what would change"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (it is off when stderr is not a terminal)"
    )
    parser.add_argument("--report", metavar="JSON", help="also write the summary as JSON here")
    _flag(
        parser,
        "--data-format",
        default="auto",
        choices=["auto", "sharegpt", "openai", "alpaca"],
        help="input record shape (default: detected per record)",
    )
    if skip_bad:
        _flag(
            parser,
            "--skip-bad",
            action="store_true",
            help="drop records that cannot be used (counted by reason) instead of stopping with the list",
        )
    parser.add_argument("--examples", type=int, default=3, help="example ids shown per reason")


def _guard(func):
    """Expected failures print one line and exit 2; the output is never left half-written.

    Handled here rather than by cli.errors, whose handler imports the training stack (seconds)."""

    @functools.wraps(func)
    def wrapper(args) -> int:
        from llama_sft.cli.errors import err_console

        from .stream import ToolError

        try:
            return func(args)
        except (ToolError, ValueError, ImportError, FileNotFoundError) as exc:
            err_console.print(f"error: {exc}", style="red", highlight=False, soft_wrap=True, markup=False)
            return 2

    return wrapper


def _run(args, command: str, output: str | None = None, drop_bad: bool | None = None):
    from .stream import Run

    return Run(
        command,
        args.inputs,
        output if output is not None else args.output,
        dry_run=args.dry_run,
        quiet=args.quiet,
        drop_bad=getattr(args, "skip_bad", False) if drop_bad is None else drop_bad,
        report=args.report,
        data_format=args.data_format,
        examples=args.examples,
    )


def register(sub) -> None:
    from llama_sft.cli.main import formatter

    fmt = formatter()

    p = sub.add_parser(
        "clean",
        help="HTML to Markdown, whitespace, empty/non-alternating turns, filters",
        formatter_class=fmt,
        epilog=COMMON_EPILOG,
        description=(
            "Clean conversations for training. HTML replies (content that starts with a tag, as chat "
            "exports write them) become Markdown via markdownify; whitespace is normalized (LF, no "
            "trailing spaces, at most two blank lines in a row, stripped). An empty turn is dropped with "
            "the turn it pairs with; then the validator's rules apply (a leading reply or trailing "
            "question is dropped; a record that does not alternate, has a misplaced system message or "
            "no reply is dropped). Every change and drop is counted by reason."
        ),
    )
    _common(p, skip_bad=False)
    _flag(
        p,
        "--drop-pattern",
        action="append",
        default=[],
        metavar="REGEX",
        help="drop records with a reply matching REGEX (case-insensitive; repeatable), e.g. 'as an AI language model'",
    )
    p.add_argument(
        "--lang",
        default=None,
        metavar="CODES",
        help="keep only these languages (ISO 639-1, comma-separated, e.g. en,de); needs py3langid",
    )
    _flag(
        p,
        "--rename-role",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="rename a role before reading it, e.g. bot=assistant or customer=user (repeatable)",
    )
    _flag(
        p,
        "--merge-consecutive",
        action="store_true",
        help="merge consecutive turns of one role (joined by a blank line) instead of dropping the record",
    )
    p.add_argument(
        "--html",
        default="assistant",
        choices=["assistant", "all", "off"],
        help="which turns are converted when they are HTML (user turns often quote HTML on purpose)",
    )
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser(
        "split-long",
        help="split conversations into whole rounds that fit N tokens",
        formatter_class=fmt,
        epilog=COMMON_EPILOG,
        description=(
            "Split each conversation longer than --max-length tokens (counted on the text the chat "
            "template renders, with the real tokenizer) into pieces of whole rounds, packed greedily; "
            "each piece keeps the system message and gets the id ORIG_1, ORIG_2, ... plus parent_id "
            "ORIG. The final round is always kept. A round too long on its own is dropped, or with "
            "--long-round truncate has its reply cut to fit; both are counted."
        ),
    )
    _common(p)
    p.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer dir or hub id ('tiny' = the small built-in test tokenizer)",
    )
    _flag(
        p,
        "--max-length",
        "--model_max_length",
        type=int,
        required=True,
        dest="max_length",
        help="token budget per piece (use the training --model_max_length)",
    )
    _flag(
        p,
        "--conv-template",
        default="vicuna_v1.1",
        help="built-in template name, 'tokenizer', or a .yaml/.jinja file",
    )
    _flag(
        p,
        "--long-round",
        default="drop",
        choices=["drop", "truncate"],
        help="a single round longer than --max-length: drop it, or cut its reply to fit",
    )
    _flag(p, "--batch-size", type=int, default=256, help="conversations tokenized per batch")
    p.set_defaults(func=cmd_split_long)

    p = sub.add_parser(
        "dedupe",
        help="drop exact and near duplicates (MinHash), report clusters",
        formatter_class=fmt,
        epilog=COMMON_EPILOG,
        description=(
            "Drop exact duplicates (same roles and content after lowercasing and collapsing whitespace) "
            "and near duplicates (MinHash estimate of Jaccard similarity over word n-grams of the "
            "dialogue from the first user turn >= --threshold). The first record of each cluster is "
            "kept. Unlike the other tools, memory grows with the records kept (about 1 KB each)."
        ),
    )
    _common(p)
    p.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold in (0, 1]")
    _flag(p, "--exact-only", action="store_true", help="skip near-duplicate detection")
    _flag(
        p,
        "--num-perm",
        type=int,
        default=128,
        help="MinHash permutations (memory: 4 bytes each per kept record)",
    )
    p.add_argument("--ngram", type=int, default=3, help="words per shingle")
    _flag(
        p,
        "--near-chars",
        type=int,
        default=2000,
        help="characters of dialogue compared, from the first user turn (the first round, and more while under this)",
    )
    p.add_argument(
        "--clusters",
        metavar="JSONL",
        help="write one line per dropped record: kept id, duplicate id, kind, similarity",
    )
    p.set_defaults(func=cmd_dedupe)

    p = sub.add_parser(
        "convert",
        help="convert between ShareGPT, OpenAI and Alpaca records",
        formatter_class=fmt,
        description=(
            "Write each record in another shape. ShareGPT <-> OpenAI is lossless (roles, contents, "
            "per-turn fields, id and other top-level keys). Alpaca holds a single round: records with "
            "more rounds or per-turn fields are errors, listed, unless --flatten writes one record per "
            "round (ids ORIG_1, ...; earlier rounds in `history`)."
        ),
    )
    _common(p)
    p.add_argument("--to", required=True, choices=["sharegpt", "openai", "alpaca"], help="target format")
    p.add_argument(
        "--flatten", action="store_true", help="Alpaca: one record per round, earlier rounds in `history`"
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "mix",
        help="reproducible weighted sample of several files",
        formatter_class=fmt,
        description=(
            "Sample --total records from several files in the given proportions, e.g. "
            "`mix chat.jsonl:0.7 code.jsonl:0.3 --total 10000 --seed 0 -o mix.jsonl`. Shares add up "
            "to --total exactly; picks are uniform without replacement; the same seed and inputs give "
            "the same file. Writes OUT.manifest.json next to the output (sources, hashes, counts)."
        ),
    )
    _common(p, inputs=("PATH:WEIGHT", "source files with their weights (weights need not add up to 1)"))
    p.add_argument("--total", type=int, required=True, help="records in the mix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--repeat",
        action="store_true",
        help="allow reusing records when a source has fewer than its share (else an error)",
    )
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser(
        "split",
        help="reproducible train/eval split",
        formatter_class=fmt,
        description=(
            "Split into train and eval: the eval set is the round(ratio x records) conversations with the smallest "
            "seeded hash, so the same seed and data give the same split, and pieces from split-long (same parent_id) "
            "stay on one side. Writes DIR/train.jsonl, DIR/eval.jsonl and DIR/manifest.json."
        ),
    )
    _common(p, output=False)
    _flag(
        p, "--output-dir", "-o", required=True, help="directory for train.jsonl, eval.jsonl and manifest.json"
    )
    _flag(p, "--eval-ratio", type=float, default=0.01, help="share of records for eval")
    _flag(
        p,
        "--eval-size",
        type=int,
        default=None,
        help="exact number of eval conversations (overrides --eval-ratio)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)


@_guard
def cmd_clean(args) -> int:
    from .clean import CleanOptions, run_clean

    rename = {}
    for spec in args.rename_role:
        old, sep, new = spec.partition("=")
        if not sep or not old or not new:
            raise ValueError(f"--rename-role {spec!r} must be FROM=TO, e.g. bot=assistant")
        rename[old.strip().lower()] = new.strip().lower()
    languages = tuple(c.strip() for c in args.lang.split(",") if c.strip()) if args.lang else ()
    if languages:
        from .clean import detect_language

        detect_language("hello")  # fail now, not after the first record, if py3langid is missing
    options = CleanOptions(
        html=args.html,
        merge_consecutive=args.merge_consecutive,
        drop_patterns=tuple(args.drop_pattern),
        languages=languages,
        rename=rename,
    )
    with _run(args, "clean", drop_bad=True) as run:
        return run_clean(run, options)


@_guard
def cmd_split_long(args) -> int:
    from llama_sft.cli.common import resolve_tokenizer
    from llama_sft.data.templates import get_template

    from .split_long import Splitter, run_split_long

    tokenizer = resolve_tokenizer(args.tokenizer)
    splitter = Splitter(
        get_template(args.conv_template, tokenizer), tokenizer, args.max_length, args.long_round
    )
    with _run(args, "split-long") as run:
        run.summary.extra["tokenizer"] = args.tokenizer
        run.summary.extra["conv_template"] = args.conv_template
        return run_split_long(run, splitter, args.batch_size)


@_guard
def cmd_dedupe(args) -> int:
    from .dedupe import DedupeOptions, run_dedupe

    options = DedupeOptions(
        threshold=None if args.exact_only else args.threshold,
        num_perm=args.num_perm,
        ngram=args.ngram,
        near_chars=args.near_chars,
    )
    with _run(args, "dedupe") as run:
        return run_dedupe(run, options, args.clusters)


@_guard
def cmd_convert(args) -> int:
    from .convert import run_convert

    with _run(args, "convert") as run:
        return run_convert(run, args.to, args.flatten)


@_guard
def cmd_mix(args) -> int:
    from .sample import parse_source, run_mix

    sources = [parse_source(spec) for spec in args.inputs]
    args.inputs = [path for path, _ in sources]
    with _run(args, "mix") as run:
        return run_mix(run, sources, args.total, args.seed, args.repeat)


@_guard
def cmd_split(args) -> int:
    from pathlib import Path

    from .sample import run_split

    out = Path(args.output_dir)
    with _run(args, "split", output=str(out / "train.jsonl")) as run:
        return run_split(
            run,
            None if args.eval_size is not None else args.eval_ratio,
            args.seed,
            str(out / "eval.jsonl"),
            args.eval_size,
            str(out / "manifest.json"),
        )
