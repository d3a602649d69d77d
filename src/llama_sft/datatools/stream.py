"""Streaming input and output for the data tools, and the `Run` that ties them to a summary.

JSONL streams line by line. A `.json` array streams with `ijson` when it is installed; without
it the file is read whole (as `data.formats.iter_records` does), so JSONL is the format to use
for big files. Output goes to a hidden `.partial` file renamed into place only when the run
succeeds, so a failed or interrupted run never leaves a half-written file that looks complete
(and a tool may safely write over its own input).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from llama_sft.data.formats import RawRecord, RecordError, iter_jsonl, iter_records, record_id

from .records import Chat, parse_record
from .summary import Summary


class ToolError(Exception):
    """An expected failure (bad arguments, bad input under the default policy): one message, exit 2."""


def _iter_json_array(path: Path) -> Iterator[RawRecord]:
    import ijson

    index = 0
    with open(path, "rb") as handle:
        try:
            for index, item in enumerate(ijson.items(handle, "item", use_float=True)):
                yield RawRecord(str(path), index, None, item)
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            reason = "invalid_utf8" if isinstance(exc, UnicodeDecodeError) else "malformed_json"
            yield RawRecord(
                str(path),
                index + 1,
                None,
                error=RecordError(reason, f"{exc}; the rest of the file is unreadable"),
            )


def stream_records(path: str | Path) -> Iterator[RawRecord]:
    """Records of one file, streamed where the format allows it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if not path.is_dir() and path.suffix not in (".json", ".jsonl", ".ndjson", ".parquet"):
        raise ToolError(
            f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet or a dataset dir"
        )
    if path.suffix in (".jsonl", ".ndjson"):
        return iter_jsonl(path)
    if path.suffix == ".json":
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip()
        if (
            head.startswith(b"{") and b"\n{" in head.rstrip()
        ):  # JSON Lines named .json, as iter_records detects
            return iter_jsonl(path)
        if head.startswith(b"["):
            try:
                import ijson  # noqa: F401
            except ImportError:
                pass  # read whole below; documented limit
            else:
                return _iter_json_array(path)
    return iter_records(path)


def where(raw: RawRecord | Chat, rid: str | None = None) -> str:
    line = getattr(raw, "line", None)
    place = f"{raw.file}:{line}" if line is not None else raw.file
    rid = rid if rid is not None else getattr(raw, "id", None)
    return f"{place} record {raw.index}" + (f" (id {rid})" if rid not in (None, "") else "")


class JsonlWriter:
    """Write JSON lines to `path` via a hidden partial file; counts records and hashes the bytes."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.count = 0
        self._sha = hashlib.sha256()
        self._handle = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._partial = self.path.with_name(f".{self.path.name}.partial")
            self._handle = open(self._partial, "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.count += 1
        if self._handle is not None:
            line = json.dumps(record, ensure_ascii=False) + "\n"
            try:
                data = line.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate from a JSON escape: keep it escaped
                line = json.dumps(record) + "\n"
                data = line.encode("utf-8")
            self._handle.write(line)
            self._sha.update(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def commit(self) -> None:
        if self._handle is not None:
            self._handle.close()
            os.replace(self._partial, self.path)
            self._handle = None

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._partial.unlink(missing_ok=True)
            self._handle = None


def progress(iterable: Iterable, desc: str, quiet: bool = False, total: int | None = None):
    """A tqdm bar on stderr, off when --quiet or when stderr is not a terminal."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        unit=" rec",
        total=total,
        disable=disable,
        mininterval=0.5,
        file=sys.stderr,
        dynamic_ncols=True,
    )


class Run:
    """One invocation of a streaming tool: inputs, output, error policy and summary.

    Bad records are errors by default: the run goes on to count them all, then writes nothing
    and exits 2 with the full list. `drop_bad` (clean always, other tools with --skip_bad)
    drops them instead, counted by reason like every other change.
    """

    def __init__(
        self,
        command: str,
        inputs: list[str],
        output: str | None,
        dry_run: bool = False,
        quiet: bool = False,
        drop_bad: bool = False,
        report: str | None = None,
        data_format: str = "auto",
        examples: int = 3,
    ):
        self.command, self.inputs, self.dry_run, self.quiet = command, list(inputs), dry_run, quiet
        self.drop_bad, self.report, self.data_format = drop_bad, report, data_format
        self.summary = Summary(command, max_examples=examples)
        if output is None and not dry_run:
            raise ToolError(f"{command}: give -o/--output (or --dry-run to only see the summary)")
        for path in self.inputs:  # fail on a missing input before creating any output
            if not Path(path).exists():
                raise FileNotFoundError(f"data file not found: {path}")
        self.output = output
        self.writer = JsonlWriter(None if dry_run else output)
        self.writers = [self.writer]

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:  # an exception or Ctrl-C: leave no partial output behind
            for writer in self.writers:
                writer.discard()

    def add_writer(self, path: str | Path) -> JsonlWriter:
        """A second output (eval split, clusters) committed or discarded with the main one."""
        writer = JsonlWriter(None if self.dry_run else path)
        self.writers.append(writer)
        return writer

    def raw_records(
        self, paths: list[str] | None = None, desc: str | None = None, count: bool = True
    ) -> Iterator[RawRecord]:
        """Records of `paths` (default: all inputs) in order, with a progress bar; counted as read."""

        def chained():
            for path in self.inputs if paths is None else paths:
                for raw in stream_records(path):
                    if count:
                        self.summary.read += 1
                    yield raw

        return progress(chained(), desc or self.command, self.quiet)

    def parse(self, raw: RawRecord, rename: dict[str, str] | None = None) -> tuple[Chat | None, list[str]]:
        """The record as a Chat plus changes made reading it, or (None, []) after rejecting it."""
        try:
            return parse_record(raw, self.data_format, rename)
        except RecordError as exc:
            rid = record_id(raw.data, raw.index) if raw.error is None else None
            self.reject(where(raw, rid), exc.reason, exc.detail, rid)
            return None, []

    def reject(self, location: str, reason: str, detail: str, rid: str | None = None) -> None:
        if self.drop_bad:
            self.summary.note("dropped", reason, rid if rid not in (None, "") else location)
        else:
            self.summary.note("error", reason, f"{location}: {detail}")

    def write(self, record: dict, writer: JsonlWriter | None = None) -> None:
        (writer or self.writer).write(record)
        self.summary.written += 1

    def finish(self, manifest: dict | None = None, manifest_file: str | Path | None = None) -> int:
        """Commit or discard the outputs, print the summary, write --report; returns the exit code.

        `manifest` is written next to the output (`out.manifest.json`, or `manifest_file`).
        """
        summary = self.summary.finish()
        failed = summary.errors > 0
        for writer in self.writers:
            writer.discard() if failed else writer.commit()
        if manifest is not None and not failed and not self.dry_run:
            write_manifest(manifest_file or manifest_path(self.output), manifest)
        summary.print(dry_run=self.dry_run)
        if self.report:
            summary.write_json(self.report)
        if failed:
            from llama_sft.cli.errors import err_console

            err_console.print(
                f"[bold red]error:[/] {summary.errors:,} record(s) cannot be used as they are (listed above); "
                "nothing was written. Fix them (`llama-sft data clean` repairs most), or pass --skip_bad "
                "to drop them (counted).",
                highlight=False,
                soft_wrap=True,
            )
            return 2
        return 0


def file_sha256(path: str | Path) -> str:
    from llama_sft.data.dataset import file_fingerprint

    return file_fingerprint(path)


def manifest_path(output: str | Path) -> Path:
    """`mix.jsonl` -> `mix.manifest.json`, next to the output."""
    output = Path(output)
    return output.with_name(output.name.rsplit(".", 1)[0] + ".manifest.json")


def write_manifest(path: str | Path, manifest: dict) -> None:
    Path(path).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
