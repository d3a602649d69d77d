"""`llama-sft eval`: loss per supervised token (overall, per reply), generations with references, long context."""

from __future__ import annotations

import json
import math

import pytest

from llama_sft.evaluate.generations import rouge_l_scorer, score_answers
from llama_sft.evaluate.loss import LossTally, turn_of_tokens


def test_turn_of_tokens_maps_by_token_start():
    offsets = [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15)]
    assert turn_of_tokens(offsets, [(5, 9), (12, 15)]).tolist() == [0, 0, 1, 0, 2]


def test_tally_is_per_token_not_per_batch():
    import numpy as np

    tally = LossTally()
    tally.add(np.array([1.0]), np.array([1]))  # a batch with one token
    tally.add(np.array([3.0, 3.0, 3.0]), np.array([1, 2, 2]))
    assert tally.total / tally.tokens == 2.5  # a mean of batch means would say 2.0
    assert LossTally.summary(*tally.by_key[2]) == {
        "tokens": 2,
        "loss": 3.0,
        "perplexity": round(math.exp(3.0), 4),
    }


def test_scores():
    rouge = rouge_l_scorer()
    assert rouge is not None, "rouge-score is a dependency of eval"
    assert rouge("47 km is 47000 m.", "47 km is 47000 m.") == 1.0
    assert rouge("Ça va bien", "ça va") == pytest.approx(0.8)  # Unicode words, case-folded
    records = [
        {"reference": "a b", "generation": "a b", "exact_match": 1, "rouge_l": 1.0, "finish_reason": "stop"},
        {"reference": "a b", "generation": "a", "exact_match": 0, "rouge_l": 0.6, "finish_reason": "length"},
        {"reference": None, "generation": "x", "finish_reason": "stop"},
    ]
    assert score_answers(records) == {
        "generated": 3,
        "with_reference": 2,
        "exact_match": 0.5,
        "rouge_l": 0.8,
        "stopped_by_length": 1,
    }


@pytest.mark.slow
def test_eval_cli_on_the_demo_run(full_run, demo_data, tmp_path, capsys):
    from llama_sft.cli.main import main
    from llama_sft.demo import eval_loss
    from llama_sft.model.trained import load_trained

    out = tmp_path / "eval"
    argv = [
        "eval",
        str(full_run),
        "--data",
        str(demo_data["heldout"]),
        "--out",
        str(out),
        "--max_new_tokens",
        "4",
        "--batch_size",
        "3",
        "--json",
        "--no_progress",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["eval_results.json", "generations.jsonl"]
    assert json.loads((out / "eval_results.json").read_text())["loss"] == result["loss"]

    loss = result["loss"]
    model, tokenizer, template = load_trained(full_run)
    # The demo's own held-out loss (one batch, summed token losses / supervised tokens) is the same number.
    assert loss["loss"] == pytest.approx(
        eval_loss(model, tokenizer, template, demo_data["examples"]), abs=1e-4
    )
    demo_after = json.loads((full_run.parent / "demo_results.json").read_text())["after"]["eval_loss"]
    assert loss["loss"] == pytest.approx(demo_after, abs=1e-4)
    assert loss["perplexity"] == pytest.approx(math.exp(loss["loss"]), rel=1e-4)
    assert loss["conversations"] == len(demo_data["examples"]) and loss["truncated"] == 0
    turns = loss["per_turn"]
    assert set(turns) == {"1", "2"}  # the follow-up conversations have a second reply
    assert sum(t["tokens"] for t in turns.values()) == loss["tokens"]
    weighted = sum(t["loss"] * t["tokens"] for t in turns.values()) / loss["tokens"]
    assert weighted == pytest.approx(loss["loss"], abs=1e-5)

    lines = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == len(demo_data["examples"])
    for line, example in zip(lines, demo_data["examples"], strict=True):
        assert line["reference"] == example.messages[-1][1]
        assert line["prompt"] == example.messages[-2][1]
        assert line["completion_tokens"] <= 4 and line["exact_match"] in (0, 1) and 0 <= line["rouge_l"] <= 1
        assert line["loss"] > 0
    gen = result["generation"]
    assert (
        gen["generated"] == gen["with_reference"] == len(lines) and "rouge_l" in gen and "exact_match" in gen
    )


@pytest.mark.slow
def test_eval_loss_does_not_depend_on_batching(full_run, demo_data):
    from llama_sft.data.validate import load_conversations
    from llama_sft.evaluate import position_loss, supervised_loss
    from llama_sft.model.trained import load_trained

    model, tokenizer, template = load_trained(full_run)
    conversations, _ = load_conversations(demo_data["heldout"])
    one = supervised_loss(model, tokenizer, template, conversations, 256, batch_size=1)
    many = supervised_loss(model, tokenizer, template, conversations, 256, batch_size=8)
    assert one["tokens"] == many["tokens"]
    assert one["loss"] == pytest.approx(many["loss"], abs=1e-5)
    assert one["per_turn"]["2"]["loss"] == pytest.approx(many["per_turn"]["2"]["loss"], abs=1e-5)
    last = supervised_loss(model, tokenizer, template, conversations, 256, strategy="train_on_last")
    assert last["tokens"] < one["tokens"]
    # Too little text for the rows asked: it is reused, and the result says so.
    short = position_loss(
        model, tokenizer, ["<s>USER: hi ASSISTANT: ok</s>"], length=64, windows=2, buckets=4
    )
    assert short["data_reused"] is True and [b["tokens"] for b in short["buckets"]] == [30, 32, 32, 32]
    assert short["original_context"] is None and "beyond_original_context" not in short["buckets"][0]


@pytest.mark.slow
def test_long_context_buckets_cover_the_trained_length(lora_run, demo_data, tmp_path, capsys):
    """The LoRA run trained at 1024 tokens with linear RoPE x2 on a 512-position base."""
    from llama_sft.cli.main import main

    argv = [
        "eval",
        str(lora_run),
        "--data",
        str(demo_data["heldout"]),
        "--out",
        str(tmp_path),
        "--no_generate",
        "--long-context",
        "--windows",
        "1",
        "--buckets",
        "4",
        "--json",
        "--no_progress",
    ]
    assert main(argv) == 0
    long = json.loads(capsys.readouterr().out)["long_context"]
    assert long["length"] == 1024 and long["windows"] == 1
    assert [(b["start"], b["end"]) for b in long["buckets"]] == [
        (0, 256),
        (256, 512),
        (512, 768),
        (768, 1024),
    ]
    assert [b["beyond_original_context"] for b in long["buckets"]] == [False, False, True, True]
    assert long["original_context"] == 512 and long["rope_parameters"]["factor"] == 2.0
    assert sum(b["tokens"] for b in long["buckets"]) == 1023
    assert all(math.isfinite(b["loss"]) for b in long["buckets"])


@pytest.mark.slow
def test_eval_table_output(full_run, demo_data, tmp_path, capsys):
    from llama_sft.cli.main import main

    argv = [
        "eval",
        str(full_run),
        "--data",
        str(demo_data["heldout"]),
        "--out",
        str(tmp_path),
        "--limit",
        "2",
        "--max_new_tokens",
        "2",
        "--temperature",
        "0.8",
        "--seed",
        "1",
        "--no_progress",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "supervised tokens" in out and "reply 1" in out and "exact match" in out and "ROUGE-L" in out
    assert "temperature 0.8" in out
