"""Host RAM while the weights load (plan/load_host.py): who reads the checkpoint under each sharding,
and the `llama-sft plan` column and JSON that report it."""

from __future__ import annotations

import json

from llama_sft.plan.load_host import load_host
from llama_sft.plan.memory import GIB, Setting
from llama_sft.plan.search import plan
from llama_sft.plan.shapes import load_shape

SHAPE = load_shape("llama2-7b")
BF16 = 2 * SHAPE.total_params  # what one reader holds: the weights in bf16


def at(sharding: str, method: str = "lora", **kw):
    return load_host(SHAPE, Setting(method=method, sharding=sharding, world_size=16, **kw), gpus_per_node=8)


def test_ddp_and_zero12_every_rank_reads_the_whole_model():
    for sharding in ("none", "zero1", "zero2"):
        load = at(sharding)
        assert (load.reader_bytes, load.other_bytes, load.readers_per_node) == (BF16, BF16, 8)
        assert load.per_node == 8 * BF16


def test_zero3_and_lean_fsdp_one_reader_per_node_and_nothing_on_the_others():
    for sharding in ("zero3", "fsdp"):
        load = at(sharding)
        assert (load.reader_bytes, load.other_bytes, load.readers_per_node) == (BF16, 0.0, 1)
        assert load.per_node == BF16  # an eighth of DDP's on an 8-GPU node
    assert at("zero3").who == "rank 0" and at("fsdp").who == "each node's first rank"


def test_fsdp_without_cpu_ram_efficient_loading_and_qlora_read_on_every_rank():
    bare = load_host(SHAPE, Setting(sharding="fsdp", world_size=16), gpus_per_node=8, lean_fsdp=False)
    assert bare.readers_per_node == 8 and bare.other_bytes == BF16
    for sharding in ("zero3", "fsdp"):  # bitsandbytes quantizes while reading: no broadcast path
        assert at(sharding, method="qlora").readers_per_node == 8


def test_fp32_weights_double_the_reader_and_a_cpu_rank_keeps_its_shard():
    assert at("none", method="full", precision="mixed").reader_bytes == 2 * BF16
    # On CPU the device is host memory: the receiving rank holds its 1/N shard and the largest tensor
    # (the embedding) twice while it is in flight, as measured (docs/distributed.md).
    cpu = load_host(SHAPE, Setting(sharding="fsdp", world_size=2, device="cpu"), gpus_per_node=2)
    embedding = 2 * SHAPE.vocab_size * SHAPE.hidden_size
    assert cpu.other_bytes == BF16 / 2 + 2 * embedding and cpu.per_node == 1.5 * BF16 + 2 * embedding


def test_plan_rows_carry_the_load_numbers(capsys):
    rows = plan(SHAPE, Setting(world_size=8), 80 * GIB, ("lora",), gpus_per_node=8)
    by = {(r.setting.sharding, r.setting.offload, r.setting.gradient_checkpointing): r for r in rows}
    zero3, ddp = by[("zero3", "none", False)].to_json(), by[("none", "none", False)].to_json()
    assert zero3["load_host_gib_reader"] == round(BF16 / GIB, 1) and zero3["load_host_gib_other"] == 0
    assert ddp["load_host_gib_per_node"] == round(8 * BF16 / GIB, 1) and ddp["load_readers"] == "every rank"

    from llama_sft.cli.main import main

    assert (
        main(["plan", "--model", "llama2-7b", "--gpus", "8", "--gpu-memory", "80GiB", "--method", "lora"])
        == 0
    )
    table = capsys.readouterr().out
    assert "load GiB" in table and "13 / 0" in table  # zero3 and fsdp rows: reader / the others
    assert main(["plan", "--model", "llama2-7b", "--gpus", "8", "--gpu-memory", "80GiB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    fsdp = {r["method"]: r["load_readers"] for r in out if r["sharding"] == "fsdp"}
    assert fsdp == {"full": "each node's first rank", "lora": "each node's first rank", "qlora": "every rank"}
