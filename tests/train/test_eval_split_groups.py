"""`--eval_ratio` holds out whole conversations: the pieces `data split-long` cut from one
conversation (same parent_id) never land on both sides, as with `llama-sft data split`."""

from __future__ import annotations

from llama_sft.config import parse_run_config
from llama_sft.data.templates import get_template
from llama_sft.train.run import build_datasets


def test_eval_ratio_keeps_each_parent_conversation_on_one_side(write_json, tiny_tokenizer, tmp_path):
    records = [
        {"id": f"c{p}_{k}", "parent_id": f"c{p}",
         "conversations": [{"from": "human", "value": f"part {k} of {p}"}, {"from": "gpt", "value": f"ok {p} {k}"}]}
        for p in range(20) for k in range(1, 4)
    ]  # fmt: skip
    records += [{"id": f"solo{i}", "conversations": records[i]["conversations"]} for i in range(6)]
    path = write_json("pieces.jsonl", records)
    for seed in range(5):
        run = parse_run_config(["--data_path", str(path), "--eval_ratio", "0.2", "--seed", str(seed),
                                "--output_dir", str(tmp_path / "o"), "--data_cache_dir", str(tmp_path / "c")])  # fmt: skip
        train, evaluation, _, _ = build_datasets(run, tiny_tokenizer, get_template("vicuna_v1.1"))
        parent = {r["id"]: r.get("parent_id", r["id"]) for r in records}
        train_groups = {parent[i] for i in train["id"]}
        eval_groups = {parent[i] for i in evaluation["id"]}
        assert not train_groups & eval_groups, (seed, train_groups & eval_groups)
        assert len(train) + len(evaluation) == len(records)
        assert abs(len(evaluation) - 0.2 * len(records)) <= 3  # whole groups of up to 3 rows
