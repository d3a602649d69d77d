"""Loss and perplexity per supervised token, overall and per reply, and by position for long contexts.

Tokens and labels come from `encode_conversations`, the training path, so eval loss measures the
same tokens training did. Averages are token sums divided by token counts (never a mean of batch
means, which would weight short batches up).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.encode import IGNORE_INDEX, encode_conversations
from ..data.messages import Conversation
from ..data.templates import Template
from ..train.collator import PaddingCollator

OUTSIDE = 0  # tokens supervised but in no reply (train_on_all): reported as turn 0


@dataclass
class LossTally:
    """Running sums of token losses, overall and by a key (reply number or position bucket)."""

    total: float = 0.0
    tokens: int = 0
    by_key: dict[int, list[float]] = field(default_factory=dict)  # key -> [loss sum, tokens]

    def add(self, losses: np.ndarray, keys: np.ndarray) -> None:
        self.total += float(losses.sum())
        self.tokens += int(losses.size)
        for key in np.unique(keys):
            picked = losses[keys == key]
            slot = self.by_key.setdefault(int(key), [0.0, 0])
            slot[0] += float(picked.sum())
            slot[1] += int(picked.size)

    @staticmethod
    def summary(loss_sum: float, tokens: int) -> dict:
        loss = loss_sum / tokens if tokens else float("nan")
        return {
            "tokens": tokens,
            "loss": round(loss, 6),
            "perplexity": round(math.exp(min(loss, 50.0)), 4) if tokens else None,
        }


def turn_of_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """1-based number of the reply each token starts in (0 outside every reply), as encode.py labels them."""
    starts = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
    turn = np.zeros(len(starts), dtype=np.int64)
    for n, (s, e) in enumerate(spans, start=1):
        turn[(starts >= s) & (starts < e)] = n
    return turn


@torch.no_grad()
def token_losses(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-token loss of predicting labels[:, 1:] (IGNORE_INDEX where not supervised -> 0)."""
    logits = model(
        input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device)
    ).logits
    targets = labels[:, 1:].to(logits.device)
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return losses.view(targets.shape).cpu()


def supervised_loss(
    model,
    tokenizer,
    template: Template,
    conversations: Sequence[Conversation],
    max_length: int | None,
    strategy: str = "train_on_assistant",
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Loss per supervised token overall and per reply number; also each conversation's own loss."""
    encoded = encode_conversations(
        conversations, template, tokenizer, max_length=max_length, strategy=strategy
    )
    turns = [turn_of_tokens(enc.offsets, enc.spans) for enc in encoded]
    tally, per_conversation = LossTally(), [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    collate = PaddingCollator(tokenizer.pad_token_id)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([{"input_ids": encoded[i].input_ids, "labels": encoded[i].labels} for i in rows])
        losses = token_losses(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).numpy()
        for r, i in enumerate(rows):
            n = len(encoded[i].input_ids)
            mask = np.asarray(encoded[i].labels[1:n]) != IGNORE_INDEX
            row_losses = losses[r, : n - 1][mask]
            tally.add(row_losses, turns[i][1:n][mask])
            per_conversation[i] = LossTally.summary(float(row_losses.sum()), int(row_losses.size))
        if progress:
            progress(len(rows))
    return {
        **LossTally.summary(tally.total, tally.tokens),
        "conversations": len(encoded),
        "truncated": sum(e.truncated for e in encoded),
        "masking": strategy,
        "per_turn": {str(k): LossTally.summary(*v) for k, v in sorted(tally.by_key.items())},
        "per_conversation": per_conversation,
    }


def position_loss(
    model,
    tokenizer,
    texts: Sequence[str],
    length: int,
    windows: int = 4,
    buckets: int = 8,
    batch_size: int = 1,
    original_context: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Loss on every token of `windows` rows of `length` tokens, bucketed by position.

    Rows are cut from the rendered conversations joined end to end (each keeps its BOS); when the
    data is shorter than windows x length it is reused, and the result says so. With RoPE scaling
    working, loss stays flat (or falls, with more context) up to the trained length; a rise past
    `original_context` points at positions the model never learned.
    """
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
    if not stream:
        raise ValueError("no text to measure long-context loss on")
    needed = windows * length
    reused = len(stream) < needed
    while len(stream) < needed:
        stream.extend(stream[: needed - len(stream)])
    rows = torch.tensor(stream[:needed], dtype=torch.long).view(windows, length)
    edges = np.linspace(0, length, buckets + 1).astype(int)
    bucket_of = (
        np.searchsorted(edges, np.arange(1, length), side="right") - 1
    )  # position of each predicted token
    tally = LossTally()
    for start in range(0, windows, batch_size):
        ids = rows[start : start + batch_size]
        losses = token_losses(model, ids, torch.ones_like(ids), ids).numpy()
        for row in losses:
            tally.add(row, bucket_of)
        if progress:
            progress(len(ids))
    out = []
    for b in range(buckets):
        loss_sum, tokens = tally.by_key.get(b, [0.0, 0])
        entry = {"start": int(edges[b]), "end": int(edges[b + 1]), **LossTally.summary(loss_sum, tokens)}
        if original_context:
            entry["beyond_original_context"] = bool(edges[b + 1] > original_context)
        out.append(entry)
    return {
        "length": length,
        "windows": windows,
        "data_reused": reused,
        "original_context": original_context,
        **LossTally.summary(tally.total, tally.tokens),
        "buckets": out,
    }
