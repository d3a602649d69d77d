"""Packed batches: several conversations per row, each with positions from 0 and no attention across them.

What keeps a packed row equal to its conversations run one at a time:
- `position_ids` restart at 0 for every conversation (RoPE sees the same positions);
- each conversation's first label is ignored, so the last token of one conversation is never trained to
  predict the first token of the next (unpacked, nothing predicts a first token either);
- attention stays inside a conversation: the batch carries varlen boundaries (`cu_seq_lens_q/k`,
  `max_length_q/k`), which flash-attention uses directly, which `sdpa_packed` below uses on SDPA, and
  no `attention_mask`, so transformers builds a block-diagonal causal mask from `position_ids` for
  plain sdpa/eager (it only does that without a KV cache, hence `use_cache=False` in every batch).

tests/train/test_equivalence.py proves all three for eager, sdpa and sdpa_packed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.encode import IGNORE_INDEX

PACKED_SDPA = "sdpa_packed"


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most `capacity`; longest first, each into the fullest bin it fits.

    Lengths above `capacity` count as `capacity` (the row truncates them, as encoding already does).
    Deterministic: ties keep index order.
    """
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin), sorted; full bins drop out
    for i in order:
        need = max(1, min(int(lengths[i]), capacity))
        k = bisect.bisect_left(free, (need, -1))
        if k == len(free):
            bins.append([i])
            room, b = capacity - need, len(bins) - 1
        else:
            room, b = free.pop(k)
            bins[b].append(i)
            room -= need
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


class PackedDataset(torch.utils.data.Dataset):
    """A view of a conversation dataset whose rows are packs (best-fit decreasing, up to `max_length` tokens).

    Rows are assembled on access, so nothing is copied. A row holds the conversations' tokens end to
    end with `seq_lengths` and their `sample_index`; `PackedCollator` turns it into model inputs.
    `per_device_train_batch_size` then counts packs, not conversations.
    """

    def __init__(self, base, max_length: int, lengths: Sequence[int] | None = None):
        self.base = base
        self.max_length = max_length
        if lengths is None:
            columns = getattr(base, "column_names", None) or []
            lengths = (
                base["length"]
                if "length" in columns
                else [len(base[i]["input_ids"]) for i in range(len(base))]
            )
        self.packs = best_fit_decreasing(lengths, max_length)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> dict:
        rows = [self.base[j] for j in self.packs[i]]
        input_ids, labels, seq_lengths = [], [], []
        for row in rows:
            ids = list(row["input_ids"][: self.max_length])
            input_ids += ids
            labels += list(row["labels"][: self.max_length])
            seq_lengths.append(len(ids))
        item = {"input_ids": input_ids, "labels": labels, "seq_lengths": seq_lengths}
        item["sample_index"] = [
            row.get("sample_index", j) for row, j in zip(rows, self.packs[i], strict=True)
        ]
        return item


@dataclass
class PackedCollator:
    """Conversations (or `PackedDataset` rows) -> padding-free packed rows of at most `max_length` tokens.

    Plain conversations are packed best-fit decreasing within the batch; pre-packed rows are kept.
    Rows are right-padded to the longest row; the padding is a segment of its own (positions from 0,
    labels ignored) so it never joins a conversation.
    """

    pad_token_id: int
    max_length: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict:
        rows: list[list[tuple[list[int], list[int]]]] = []  # row -> segments (ids, labels)
        loose: list[tuple[list[int], list[int]]] = []
        loose_index: list[int] = []
        sample_index: list[int] = []  # in the order the segments appear in the batch
        for f in features:
            if "seq_lengths" in f:
                segments, start = [], 0
                for n in f["seq_lengths"]:
                    segments.append(
                        (list(f["input_ids"][start : start + n]), list(f["labels"][start : start + n]))
                    )
                    start += n
                rows.append(segments)
                sample_index += list(f.get("sample_index", []))
            else:
                # Over-long conversations follow the truncation policy of encoding: keep the start.
                loose.append((list(f["input_ids"][: self.max_length]), list(f["labels"][: self.max_length])))
                if "sample_index" in f:
                    loose_index.append(int(f["sample_index"]))
        for pack in best_fit_decreasing([len(ids) for ids, _ in loose], self.max_length):
            rows.append([loose[j] for j in pack])
            sample_index += [loose_index[j] for j in pack] if loose_index else []
        batch = self.build(rows)
        if sample_index:
            batch["sample_index"] = torch.as_tensor(sample_index, dtype=torch.long)
        return batch

    def build(self, rows: list[list[tuple[list[int], list[int]]]]) -> dict:
        width = max(sum(len(ids) for ids, _ in segments) for segments in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        seq_lens: list[int] = []
        for r, segments in enumerate(rows):
            start = 0
            for ids, lab in segments:
                if not ids:
                    continue
                end = start + len(ids)
                input_ids[r, start:end] = torch.as_tensor(ids)
                labels[r, start:end] = torch.as_tensor(lab)
                labels[r, start] = IGNORE_INDEX  # nothing predicts a conversation's first token
                position_ids[r, start:end] = torch.arange(len(ids))
                seq_lens.append(len(ids))
                start = end
            if start < width:
                position_ids[r, start:] = torch.arange(width - start)
                seq_lens.append(width - start)
        cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.as_tensor(seq_lens, dtype=torch.int32), 0)
        longest = max(seq_lens)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            # varlen boundaries over the flattened (rows x width) tokens, flash-attention's convention
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
            "use_cache": False,  # with a KV cache transformers would not derive the packed mask from positions
        }


def packed_sdpa_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs
):
    """SDPA per conversation: causal attention over each `cu_seq_lens_q` segment, so a packed row costs
    the sum of its conversations' squared lengths instead of the row's. Without varlen boundaries
    (generation, padded batches) it is transformers' sdpa with the usual mask.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[2] == 1 or key.shape[2] != query.shape[2]:  # not a packed training batch
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, width, dim = query.shape
    groups = heads // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # (batch, heads, width, dim) -> (batch * width, heads, dim): tokens in the order cu_seq_lens counts them
    q, k, v = (x.transpose(1, 2).reshape(batch * width, heads, -1) for x in (query, key, value))
    bounds = cu.tolist() if torch.is_tensor(cu) else list(cu)
    outputs = []
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        if e <= s:
            continue
        qs, ks, vs = (x[s:e].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, dropout_p=dropout, scale=scaling, is_causal=True
        )
        outputs.append(out.squeeze(0).transpose(0, 1))
    out = torch.cat(outputs, dim=0).reshape(batch, width, heads, value.shape[-1])
    return out.contiguous(), None


def register_packed_attention() -> str:
    """Make `sdpa_packed` a transformers attention implementation (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, sdpa_mask)  # same masks as sdpa when not packed
    return PACKED_SDPA


def use_packed_attention(model) -> str:
    """Switch an sdpa model to `sdpa_packed` (flash-attention and eager stay: both are correct on packed
    batches). Returns the implementation in use. Call before wrapping the model with adapters.
    """
    current = getattr(model.config, "_attn_implementation", None)
    if current != "sdpa":
        return current
    register_packed_attention()
    model.set_attn_implementation(PACKED_SDPA)
    return model.config._attn_implementation
