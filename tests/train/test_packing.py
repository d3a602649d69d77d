"""Packing pieces one by one: best-fit decreasing, the exact tensors of a packed batch, the per-segment
SDPA attention against a block-diagonal mask, and how the attention implementation is switched."""

from __future__ import annotations

import random

import pytest
import torch

from llama_sft.train.collator import PaddingCollator, make_collator
from llama_sft.train.packing import (
    PACKED_SDPA,
    PackedCollator,
    PackedDataset,
    best_fit_decreasing,
    packed_sdpa_attention,
    register_packed_attention,
    use_packed_attention,
)

X = -100
PAD = 0


def conv(ids, labels, index):
    return {"input_ids": ids, "labels": labels, "length": len(ids), "sample_index": index}


def test_best_fit_decreasing_places_each_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    assert len(bins) <= 1.05 * sum(lengths) / 128 + 2  # BFD is near the lower bound on such data
    assert bins == best_fit_decreasing(lengths, 128)  # deterministic


def test_best_fit_decreasing_picks_the_fullest_bin_that_fits():
    # 6 and 5 open two bins (room 4 and 5); 4 goes to the fuller one (room 4), 5 then fits the other.
    assert best_fit_decreasing([6, 5, 4, 5], 10) == [[0, 2], [1, 3]]
    assert best_fit_decreasing([30, 2], 10) == [[0], [1]]  # over-long: a row of its own (truncated later)
    assert best_fit_decreasing([], 10) == []
    with pytest.raises(ValueError):
        best_fit_decreasing([1], 0)


def test_packed_batch_golden():
    a = conv([1, 2, 3], [X, 2, 3], 0)
    b = conv([4, 5], [4, 5], 1)  # first token supervised (train_on_all): must not be predicted from a's end
    batch = PackedCollator(PAD, max_length=8)([a, b])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["labels"].tolist() == [[X, 2, 3, X, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["cu_seq_lens_k"].tolist() == [0, 3, 5]
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    assert batch["use_cache"] is False and "attention_mask" not in batch
    assert batch["sample_index"].tolist() == [0, 1]


def test_packed_rows_are_padded_with_a_segment_of_their_own():
    a, b, c = conv([1, 2, 3], [X, 2, 3], 0), conv([4, 5], [X, 5], 1), conv([6, 7], [6, 7], 2)
    batch = PackedCollator(PAD, max_length=4)([a, b, c])  # a alone (room 1); b + c fill the second row
    assert batch["input_ids"].tolist() == [[1, 2, 3, PAD], [4, 5, 6, 7]]
    assert batch["labels"].tolist() == [[X, 2, 3, X], [X, 5, X, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 4, 6, 8]
    assert batch["sample_index"].tolist() == [0, 1, 2]


def test_over_long_conversation_keeps_its_start():
    batch = PackedCollator(PAD, max_length=4)([conv([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], 0)])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[X, 2, 3, 4]]


def test_pad_to_multiple_of():
    batch = PackedCollator(PAD, max_length=16, pad_to_multiple_of=8)([conv([1, 2, 3], [X, 2, 3], 0)])
    assert batch["input_ids"].shape == (1, 8)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]


def test_packed_dataset_rows_collate_like_on_the_fly_packing():
    rng = random.Random(1)
    convs = []
    for i in range(20):
        ids = [rng.randint(1, 50) for _ in range(rng.randint(1, 12))]
        convs.append(conv(ids, [t if rng.random() < 0.5 else X for t in ids], i))
    packed = PackedDataset(convs, max_length=16)
    assert sorted(i for r in range(len(packed)) for i in packed[r]["sample_index"]) == list(range(20))
    assert all(sum(packed[r]["seq_lengths"]) <= 16 for r in range(len(packed)))
    collate = PackedCollator(PAD, max_length=16)
    from_rows = collate([packed[r] for r in range(len(packed))])
    on_the_fly = collate(convs)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "sample_index"):
        assert torch.equal(from_rows[key], on_the_fly[key]), key


def test_make_collator_modes():
    class Tok:
        pad_token_id = PAD

    rows = [conv([1, 2, 3], [X, 2, 3], 0), conv([4], [4], 1)]
    none = make_collator("none", Tok(), 6)(rows)
    padded = make_collator("padded", Tok(), 6)(rows)
    assert isinstance(make_collator("none", Tok(), 6), PaddingCollator)
    assert none["input_ids"].shape == (2, 6) and padded["input_ids"].shape == (2, 3)
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert isinstance(make_collator("packed", Tok(), 6), PackedCollator)
    with pytest.raises(ValueError):
        make_collator("fancy", Tok(), 6)


class _Attn(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("groups", [1, 2])
def test_packed_sdpa_equals_sdpa_with_block_diagonal_mask(groups):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    lengths = [[5, 3, 4], [7, 2, 3]]  # two rows of 12 tokens
    width, heads, dim = 12, 4, 8
    q = torch.randn(2, heads, width, dim, requires_grad=True)
    k = torch.randn(2, heads // groups, width, dim, requires_grad=True)
    v = torch.randn(2, heads // groups, width, dim, requires_grad=True)
    seg = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in lengths])
    causal = torch.arange(width)[:, None] >= torch.arange(width)[None, :]
    mask = (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]
    cu = torch.tensor([0, 5, 8, 12, 19, 21, 24], dtype=torch.int32)
    ref, _ = sdpa_attention_forward(_Attn(groups), q, k, v, mask)
    out, _ = packed_sdpa_attention(_Attn(groups), q, k, v, None, cu_seq_lens_q=cu)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    grads_out = torch.autograd.grad(out.square().sum(), (q, k, v))
    for a, b in zip(grads_out, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_packed_sdpa_without_boundaries_is_plain_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()
    ref, _ = sdpa_attention_forward(_Attn(1), q, k, v, mask)
    out, _ = packed_sdpa_attention(_Attn(1), q, k, v, mask)
    assert torch.equal(out, ref)


def test_use_packed_attention_switches_sdpa_only_and_is_not_saved(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    def model(impl):
        config = LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
        config._attn_implementation = impl
        return LlamaForCausalLM(config)

    assert register_packed_attention() == register_packed_attention() == PACKED_SDPA
    sdpa = model("sdpa")
    assert use_packed_attention(sdpa) == PACKED_SDPA
    assert use_packed_attention(model("eager")) == "eager"
    sdpa.save_pretrained(tmp_path)
    assert PACKED_SDPA not in (tmp_path / "config.json").read_text()  # a saved model loads without llama-sft


def test_packed_dataset_over_a_datasets_table_uses_its_length_column():
    import datasets

    rows = [conv([1, 2, 3], [X, 2, 3], 0), conv([4, 5, 6, 7, 8], [X, 5, 6, 7, 8], 1), conv([9, 9], [9, 9], 2)]
    table = datasets.Dataset.from_list([{**r, "id": f"r{i}"} for i, r in enumerate(rows)])
    packed = PackedDataset(table, max_length=5)
    assert [packed[i]["sample_index"] for i in range(len(packed))] == [[1], [0, 2]]
    assert packed[1] == {
        "input_ids": [1, 2, 3, 9, 9],
        "labels": [X, 2, 3, 9, 9],
        "seq_lengths": [3, 2],
        "sample_index": [0, 2],
    }
