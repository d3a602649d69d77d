"""Batch collators. Labels arrive ready (see data/encode.py); collators only pad, stack or pack.

`none` pads every row to model_max_length (FastChat's behaviour, kept for comparison), `padded`
pads to the longest row of the batch (run.py adds length-grouped sampling), `packed` puts several
conversations in a row with their own positions and no attention across them (train/packing.py).
Each batch also carries `sample_index` (dataset rows), which the trainer pops before the forward
pass to name the samples of a batch whose loss is not finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.encode import IGNORE_INDEX


@dataclass
class PaddingCollator:
    pad_token_id: int
    max_length: int | None = None  # set: pad every row to this length (packing="none")
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        target = self.max_length or longest
        if self.pad_to_multiple_of:
            target = -(-target // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, target), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, target), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, target), dtype=torch.long)
        for row, f in enumerate(features):
            ids = f["input_ids"][:target]
            input_ids[row, : len(ids)] = torch.as_tensor(ids)
            labels[row, : len(ids)] = torch.as_tensor(f["labels"][:target])
            attention_mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if "sample_index" in features[0]:
            batch["sample_index"] = torch.as_tensor([f["sample_index"] for f in features])
        return batch


def make_collator(packing: str, tokenizer, max_length: int):
    if packing == "none":
        return PaddingCollator(tokenizer.pad_token_id, max_length=max_length)
    if packing == "padded":
        return PaddingCollator(tokenizer.pad_token_id)
    if packing == "packed":
        from .packing import PackedCollator

        return PackedCollator(tokenizer.pad_token_id, max_length=max_length)
    raise ValueError(f"unknown packing mode {packing!r}")
