"""`data split-long`: split conversations into pieces of whole rounds that fit N tokens as rendered.

A piece is the system message plus consecutive (user, reply) rounds, and its length is the
token count of exactly what training builds: `template.render(piece)` tokenized without added
special tokens, as `data.encode` does. Pieces are packed greedily from the first round, each as
long as fits, and the last round is always kept (FastChat's splitter loses it). A round that is
too long on its own is dropped or has its reply cut to fit, by option, and counted either way.

Speed: tokenizing is nearly all the work, so it is done in batches and without offsets. A
conversation that fits as a whole (most of them) costs its share of one batched call. For the
rest, round boundaries are placed in proportion to character positions, a plan is made from
those, and every planned piece and the piece one round longer are counted exactly in one
batched call; the exact counts decide, and where the plan was off a few more exact counts
settle it. Every piece written has been counted exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llama_sft.data.formats import RecordError
from llama_sft.data.messages import Message
from llama_sft.data.templates import SpecialText, Template
from llama_sft.data.validate import check_turns

from .records import Chat, Turn, to_sharegpt
from .stream import Run, where

LONG_ROUND = ("drop", "truncate")
Round = tuple[Turn, Turn]


def _backend(tokenizer):
    """The Rust tokenizer behind a fast tokenizer, as `tokenizer(texts, add_special_tokens=False)` uses it.

    Calling it directly skips building Python lists of every id. Truncation or padding stored in a
    tokenizer.json would change counts, so a copy without them is used then.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


@dataclass
class Split:
    """What became of one conversation."""

    pieces: list[Chat]
    changes: list[str] = field(default_factory=list)
    dropped: str | None = None  # reason, when no piece is left


@dataclass
class _Conversation:
    chat: Chat
    system: Turn | None
    rounds: list[Round]
    cum: np.ndarray | None = None  # estimated tokens of rounds [i, j): header + cum[j] - cum[i]
    header: int = 0
    counts: dict[tuple[int, int], int] = field(default_factory=dict)  # exact tokens of rounds [i, j)

    def estimate_end(self, i: int, max_length: int) -> int:
        """The last j whose estimated piece [i, j) fits, at least i + 1."""
        if self.cum is None:
            return i + 1
        budget = max_length - self.header + self.cum[i]
        j = int(np.searchsorted(self.cum, budget, side="right")) - 1
        return min(max(j, i + 1), len(self.rounds))


def chat_rounds(chat: Chat) -> tuple[Turn | None, list[Round], list[str]]:
    """System, (user, reply) rounds and the repairs applied; raises RecordError as the validator does."""
    kept, repairs = check_turns(chat.pairs())
    system = chat.system
    dialogue = chat.dialogue
    lead = 0
    while lead < len(dialogue) and dialogue[lead].role == "assistant":
        lead += 1
    dialogue = dialogue[lead : lead + len(kept) - (system is not None)]
    return system, list(zip(dialogue[0::2], dialogue[1::2], strict=True)), [reason for reason, _ in repairs]


class Splitter:
    def __init__(self, template: Template, tokenizer, max_length: int, long_round: str = "drop"):
        if long_round not in LONG_ROUND:
            raise ValueError(f"long_round must be one of {LONG_ROUND}, got {long_round!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.template = template
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.long_round = long_round
        self.special = SpecialText.from_tokenizer(tokenizer)
        self.backend = _backend(tokenizer)
        self.tokenizer_calls = 0

    def render(self, system: Turn | None, rounds: list[Round]):
        messages = [Message("system", system.content)] if system is not None else []
        for user, reply in rounds:
            messages += [Message("user", user.content), Message("assistant", reply.content)]
        return self.template.render(messages, special=self.special)

    def count(self, texts: list[str]) -> list[int]:
        """Exact token counts, one batched call (without offsets: a sixth faster)."""
        if not texts:
            return []
        self.tokenizer_calls += 1
        if self.backend is not None:
            encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
            return [len(e) for e in encode(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _exact(self, conv: _Conversation, i: int, j: int) -> int:
        if (i, j) not in conv.counts:
            conv.counts[(i, j)] = self.count([self.render(conv.system, conv.rounds[i:j]).text])[0]
        return conv.counts[(i, j)]

    def _prefetch(self, wanted: list[tuple[_Conversation, int, int]]) -> None:
        wanted = [(c, i, j) for c, i, j in wanted if (i, j) not in c.counts]
        for (conv, i, j), n in zip(
            wanted, self.count([self.render(c.system, c.rounds[i:j]).text for c, i, j in wanted]), strict=True
        ):
            conv.counts[(i, j)] = n

    def _estimate(self, conv: _Conversation, rendered, n_tokens: int) -> None:
        """Token positions of the round boundaries, estimated in proportion to character positions.

        Only a starting point: every piece is counted exactly before it is kept.
        """
        conv.counts[(0, len(conv.rounds))] = n_tokens
        text = rendered.text
        tail = len(text) - rendered.spans[-1][1] if rendered.spans else 0
        bounds = (
            [len(self.render(conv.system, []).text)]
            + [end + tail for _, end in rendered.spans[:-1]]
            + [len(text)]
        )
        at = np.rint(np.asarray(bounds, dtype=np.float64) * (n_tokens / max(1, len(text)))).astype(np.int64)
        conv.header = int(at[0])
        conv.cum = at - at[0]

    def _plan(self, conv: _Conversation) -> list[tuple[int, int]]:
        plan, i = [], 0
        while i < len(conv.rounds):
            j = conv.estimate_end(i, self.max_length)
            plan.append((i, j))
            i = j
        return plan

    def _truncate(self, conv: _Conversation, i: int) -> Round | None:
        """The round with its reply cut (at a space where one is near) so the piece fits; None if nothing fits."""
        user, reply = conv.rounds[i]

        def fits(k: int) -> bool:
            return (
                self.count([self.render(conv.system, [(user, Turn(reply.role, reply.content[:k]))]).text])[0]
                <= self.max_length
            )

        if not fits(1):
            return None
        lo, hi = 1, len(reply.content)  # fits(lo) holds; the whole reply does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        cut = reply.content[:lo]
        space = max(cut.rfind(" "), cut.rfind("\n"))
        if space > lo // 2:
            cut = cut[:space]
        return user, Turn(reply.role, cut.rstrip(), reply.extra)

    def _pieces(self, conv: _Conversation, changes: list[str]) -> list[list[Round]]:
        pieces, i, n = [], 0, len(conv.rounds)
        while i < n:
            j = conv.estimate_end(i, self.max_length)
            while j > i + 1 and self._exact(conv, i, j) > self.max_length:
                j -= 1
            if self._exact(conv, i, j) > self.max_length:  # round i alone is too long
                cut = self._truncate(conv, i) if self.long_round == "truncate" else None
                if cut is not None:
                    pieces.append([cut])
                    _add(changes, "round_truncated")
                else:
                    _add(changes, "round_too_long" if self.long_round == "drop" else "prompt_too_long")
                i += 1
                continue
            while j < n and self._exact(conv, i, j + 1) <= self.max_length:
                j += 1
            pieces.append(conv.rounds[i:j])
            i = j
        return pieces

    def split_batch(self, items: list[tuple[Chat, Turn | None, list[Round]]]) -> list[Split]:
        convs = [_Conversation(chat, system, rounds) for chat, system, rounds in items]
        rendered = [self.render(c.system, c.rounds) for c in convs]
        lengths = self.count([r.text for r in rendered])
        long = [k for k, n in enumerate(lengths) if n > self.max_length]
        if long:
            wanted = []
            for k in long:
                self._estimate(convs[k], rendered[k], lengths[k])
                for i, j in self._plan(convs[k]):
                    wanted.append((convs[k], i, j))
                    if j < len(convs[k].rounds):
                        wanted.append((convs[k], i, j + 1))
            self._prefetch(wanted)
        out = []
        for k, conv in enumerate(convs):
            if lengths[k] <= self.max_length:
                out.append(Split([conv.chat]))
                continue
            changes: list[str] = []
            pieces = self._pieces(conv, changes)
            system = [conv.system] if conv.system is not None else []
            chats = [conv.chat.derive(system + [t for r in piece for t in r]) for piece in pieces]
            if len(chats) > 1:
                chats = [
                    c.derive(c.turns, id=f"{conv.chat.id}_{n + 1}", parent_id=conv.chat.id)
                    for n, c in enumerate(chats)
                ]
                changes.insert(0, "split")
            out.append(Split(chats, changes, dropped=None if chats else changes[-1]))
        return out


def _add(changes: list[str], reason: str) -> None:
    if reason not in changes:
        changes.append(reason)


def run_split_long(run: Run, splitter: Splitter, batch_size: int = 256) -> int:
    summary = run.summary
    pieces_written = records_split = most_pieces = 0
    batch: list[tuple[Chat, Turn | None, list[Round], list[str]]] = []

    def flush() -> None:
        nonlocal pieces_written, records_split, most_pieces
        results = splitter.split_batch([(chat, system, rounds) for chat, system, rounds, _ in batch])
        for (chat, _, _, repairs), result in zip(batch, results, strict=True):
            if result.dropped is not None:
                summary.note("dropped", result.dropped, chat.id)
                continue
            changes = repairs + result.changes
            for reason in changes:
                summary.note("changed", reason, chat.id)
            summary.changed += bool(changes)
            if len(result.pieces) > 1:
                records_split += 1
                pieces_written += len(result.pieces)
                most_pieces = max(most_pieces, len(result.pieces))
            for piece in result.pieces:
                run.write(to_sharegpt(piece))
        batch.clear()

    for raw in run.raw_records():
        chat, notes = run.parse(raw)
        if chat is None:
            continue
        try:
            system, rounds, repairs = chat_rounds(chat)
            repairs = notes + repairs
        except RecordError as exc:
            run.reject(where(raw, chat.id), exc.reason, exc.detail, chat.id)
            continue
        batch.append((chat, system, rounds, repairs))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    summary.extra["split_long"] = {
        "max_length": splitter.max_length,
        "long_round": splitter.long_round,
        "records_split": records_split,
        "pieces_from_split_records": pieces_written,
        "most_pieces": most_pieces,
        "tokenizer_calls": splitter.tokenizer_calls,
    }
    return run.finish()
