"""`llama-sft data mix` and `split`: reproducible sampling and splits, with a manifest."""

from __future__ import annotations

import json

import pytest
from dt_helpers import counts, read_jsonl, sharegpt

from llama_sft.datatools.sample import group_hash, shares


def records(prefix: str, n: int) -> list[dict]:
    return [
        sharegpt(f"{prefix}{i}", ("human", f"{prefix} question {i}"), ("gpt", f"answer {i}"))
        for i in range(n)
    ]


def test_shares_add_up_exactly():
    assert shares([0.7, 0.3], 10) == [7, 3]
    assert shares([1, 1, 1], 10) == [4, 3, 3]
    assert shares([0.5, 0.25, 0.25], 3) == [1, 1, 1]  # remainders .5, .75, .75
    assert sum(shares([0.123, 0.456, 0.421], 997)) == 997


def test_mix_counts_reproducibility_and_manifest(cli, jsonl, tmp_path):
    a, b = jsonl("a.jsonl", records("a", 40)), jsonl("b.jsonl", records("b", 10))
    out = tmp_path / "mix.jsonl"
    code, report, _ = cli("mix", f"{a}:0.7", f"{b}:0.3", "--total", 20, "--seed", 7, "-o", out)
    assert code == 0
    rows = read_jsonl(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert sum(i.startswith("a") for i in ids) == 14 and sum(i.startswith("b") for i in ids) == 6
    assert [i for i in ids if i.startswith("a")] == sorted(
        (i for i in ids if i.startswith("a")), key=lambda s: int(s[1:])
    )
    assert counts(report) == {"not_sampled": 30}
    manifest = json.loads((tmp_path / "mix.manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["total"] == 20 and manifest["output"]["records"] == 20
    assert [(s["usable_records"], s["picked"]) for s in manifest["sources"]] == [(40, 14), (10, 6)]
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"])
    first = out.read_bytes()
    assert cli("mix", f"{a}:0.7", f"{b}:0.3", "--total", 20, "--seed", 7, "-o", out)[0] == 0
    assert out.read_bytes() == first
    assert cli("mix", f"{a}:0.7", f"{b}:0.3", "--total", 20, "--seed", 8, "-o", out)[0] == 0
    assert out.read_bytes() != first


def test_mix_source_too_small(cli, jsonl, tmp_path):
    a, b = jsonl("a.jsonl", records("a", 40)), jsonl("b.jsonl", records("b", 3))
    out = tmp_path / "mix.jsonl"
    code, _, err = cli("mix", f"{a}:1", f"{b}:1", "--total", 10, "-o", out)
    assert code == 2 and "has 3 usable record(s) but its share of --total 10 is 5" in err and not out.exists()
    code, report, _ = cli("mix", f"{a}:1", f"{b}:1", "--total", 10, "-o", out, "--repeat")
    ids = [r["id"] for r in read_jsonl(out)]
    b_ids = [i for i in ids if i.startswith("b")]
    assert (
        code == 0 and len(b_ids) == 5 and {b_ids.count(f"b{k}") for k in range(3)} == {1, 2}
    )  # all once, 2 twice
    assert counts(report)["repeated"] == 2


def test_mix_bad_source_spec(cli, jsonl, tmp_path):
    code, _, err = cli("mix", jsonl("a.jsonl", records("a", 3)), "--total", 2, "-o", tmp_path / "m.jsonl")
    assert code == 2 and "PATH:WEIGHT" in err


def test_split_exact_size_reproducible_and_groups_pieces(cli, jsonl, tmp_path):
    rows = records("r", 150)
    pieces = [
        {**sharegpt(f"long_{k}", ("human", f"part {k}"), ("gpt", "x")), "parent_id": "long"}
        for k in range(1, 4)
    ]
    src = jsonl("in.jsonl", rows[:50] + pieces + rows[50:])
    code, report, _ = cli("split", src, "--eval-ratio", 0.1, "--seed", 3, "-o", tmp_path / "s")
    assert code == 0
    train, evaluation = read_jsonl(tmp_path / "s" / "train.jsonl"), read_jsonl(tmp_path / "s" / "eval.jsonl")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["eval_groups"] == 15 and manifest["train"]["records"] + manifest["eval"]["records"] == 153
    assert len(train) + len(evaluation) == 153
    in_eval = {r.get("parent_id", r["id"]) for r in evaluation}
    assert len(in_eval) == 15
    assert ("long" in in_eval) == all(p["id"] in {r["id"] for r in evaluation} for p in pieces)
    assert not ({r.get("parent_id") for r in train} & {r.get("parent_id") for r in evaluation} - {None})
    # The chosen groups are the 15 smallest seeded hashes.
    groups = sorted({r.get("parent_id", r["id"]) for r in rows + pieces}, key=lambda g: group_hash(3, g))
    assert in_eval == set(groups[:15])
    first = (tmp_path / "s" / "eval.jsonl").read_bytes()
    assert cli("split", src, "--eval_ratio", 0.1, "--seed", 3, "--output_dir", tmp_path / "t")[0] == 0
    assert (tmp_path / "t" / "eval.jsonl").read_bytes() == first
    assert report["split"] == {"seed": 3, "eval_groups": 15, "train": len(train), "eval": len(evaluation)}


def test_split_eval_size(cli, jsonl, tmp_path):
    code, report, _ = cli(
        "split", jsonl("in.jsonl", records("r", 30)), "--eval-size", 4, "-o", tmp_path / "s"
    )
    assert code == 0 and report["split"]["eval"] == 4 and report["split"]["train"] == 26


@pytest.mark.parametrize("command", ["mix", "split"])
def test_bad_records_stop_before_writing(cli, jsonl, tmp_path, command):
    src = jsonl("in.jsonl", records("r", 5) + ["{not json"])
    args = (
        [f"{src}:1", "--total", 3, "-o", tmp_path / "o.jsonl"]
        if command == "mix"
        else [src, "-o", tmp_path / "s"]
    )
    code, report, err = cli(command, *args)
    assert code == 2 and counts(report) == {"malformed_json": 1} and "nothing was written" in err
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "s" / "train.jsonl").exists()
