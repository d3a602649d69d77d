"""The chunked loss (train/loss.py) is the plain loss without the logits: for a tiny fp32 LLaMA the loss and
every gradient equal transformers' own cross-entropy (1e-5) for full fine-tuning (tied and untied head),
LoRA, DoRA, LoRA on lm_head, QLoRA, padded and packed rows; the Trainer's update equals the one-at-a-time
per-token reference with gradient accumulation 1 and 4 and with 2 gloo processes; eval is untouched.

The chunk size is shrunk to 16 positions so every batch crosses several chunks.
This file is also the worker of the two-process test: `torchrun ... test_loss.py OUT`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_equivalence import (
    MAX_LEN,
    PAD,
    TOL,
    VOCAB,
    assert_same_grads,
    collate,
    conversations,
    grads,
    one_at_a_time,
    one_sgd_step_args,
    per_batch_mean_update,
    reference,
    tiny_model,
)

from llama_sft.config import ConfigError, parse_run_config
from llama_sft.data.encode import IGNORE_INDEX
from llama_sft.train import loss as loss_mod
from llama_sft.train.collator import PaddingCollator
from llama_sft.train.offload import ActivationOffload
from llama_sft.train.packing import PackedCollator, register_packed_attention


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", VOCAB * 16)
    assert loss_mod.chunk_tokens(VOCAB) == 16


def tied_model(impl="sdpa_packed", hidden=32, tie=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    register_packed_attention()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD,
        tie_word_embeddings=tie,
    )
    config._attn_implementation = impl
    model = LlamaForCausalLM(config)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    return model


def with_adapters(kind: str, base=None):
    from peft import LoraConfig, get_peft_model

    base = base or (lambda: tiny_model("sdpa_packed"))
    if kind == "full":
        return base()
    if kind == "tied":
        return tied_model()
    targets = ["q_proj", "v_proj", "down_proj"] + (["lm_head"] if kind == "lora_head" else [])
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, use_dora=kind == "dora"
    )
    return get_peft_model(base(), config)


def loss_and_grads(model, batch, num_items):
    loss = model(**batch, num_items_in_batch=num_items).loss
    loss.backward()
    return loss.detach(), grads(model)


def assert_chunked_equals_plain(model, batch, num_items=None):
    want_loss, want = loss_and_grads(model, batch, num_items)
    loss_mod.install(model, "chunked")
    assert loss_mod.installed(model) == "chunked"
    got_loss, got = loss_and_grads(model, batch, num_items)
    loss_mod.install(model, "plain")
    torch.testing.assert_close(got_loss, want_loss, **TOL)
    assert want and any(g.abs().sum() > 0 for g in want.values())
    assert_same_grads(got, want)


@pytest.mark.parametrize("kind", ["full", "tied", "lora", "dora", "lora_head"])
@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_loss_and_grads_equal_plain(kind, mode):
    model, batch = with_adapters(kind), collate(mode, conversations())
    count = int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum())
    if kind == "lora_head":  # peft's LoRA Linear on the head: the checkpointed path, through the module
        head = model.get_base_model().lm_head
        assert not loss_mod.fusable(head) and any("lm_head" in n for n in grads_names(model))
    assert_chunked_equals_plain(model, batch, count)
    assert_chunked_equals_plain(model, batch, None)  # no num_items_in_batch: the batch's own mean


def grads_names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_qlora_loss_and_grads_equal_plain(tmp_path):
    from ci import require_module  # here: the 2-process worker imports this module without tests/ on its path

    require_module("bitsandbytes")  # QLoRA: bitsandbytes >= 0.45 runs NF4 on CPU
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # hidden 128: bitsandbytes' double quantization needs more than a handful of 64-weight blocks
    tied_model("sdpa", hidden=128, tie=False).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert "Linear4bit" in type(model.get_base_model().model.layers[0].self_attn.q_proj.base_layer).__name__
    batch = collate("packed", conversations())
    assert_chunked_equals_plain(model, batch, int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum()))


def test_nothing_supervised_gives_zero_grads_and_plain_nan():
    model = tiny_model("sdpa")
    batch = collate("padded", conversations())
    batch["labels"][:] = IGNORE_INDEX
    loss_mod.install(model, "chunked")
    loss = model(**batch, num_items_in_batch=5).loss
    loss.backward()
    assert loss.item() == 0 and all(g.abs().max() == 0 for g in grads(model).values())
    assert torch.isnan(model(**batch).loss)  # 0/0, as transformers' own mean gives


def test_normalization_follows_num_items_in_batch():
    # What makes accumulation exact: the loss is the token sum / the step's count, not this batch's mean.
    model = loss_mod.install(tiny_model("sdpa"), "chunked")
    batch = collate("packed", conversations())
    count = int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum())
    mean = model(**batch).loss
    torch.testing.assert_close(model(**batch, num_items_in_batch=3 * count).loss, mean / 3, **TOL)
    torch.testing.assert_close(
        model(**batch, num_items_in_batch=torch.tensor(count)).loss, mean, **TOL
    )  # the Trainer passes a tensor


def test_eval_and_no_grad_use_the_models_own_forward():
    model = tiny_model("sdpa")
    batch = collate("padded", conversations())
    model.eval()
    with torch.no_grad():
        want = model(**batch)
        loss_mod.install(model, "chunked")
        got = model(**batch)
    assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)
    model.train()
    assert model(**batch).logits is None  # training: no logits were made


def test_config_rejects_unknown_and_unavailable_impls(tmp_path):
    data = tmp_path / "d.json"
    data.write_text("[]")
    base = ["--data_path", str(data), "--model_name_or_path", "x"]
    assert parse_run_config(base).validate().training.loss_impl == "chunked"
    with pytest.raises(ConfigError, match="--loss_impl 'fused': choose one of chunked, plain, liger"):
        parse_run_config(base + ["--loss_impl", "fused"]).validate()
    if loss_mod.liger_problem():
        with pytest.raises(ConfigError, match="--loss_impl liger: liger-kernel .* Use --loss_impl chunked"):
            parse_run_config(base + ["--loss_impl", "liger"]).validate()
        with pytest.raises(RuntimeError, match="liger"):
            loss_mod.install(tiny_model(), "liger")


# --- the Trainer: accumulation, processes, eval -----------------------------------------------------------------


def trainer_update(tmp_path, mode, per_device, accumulation, impl="chunked", offload=False):
    """Parameter change after one SGD step (lr 1, no clipping) of SFTTrainer over all conversations."""
    from llama_sft.train.trainer import SFTTrainer

    rows = conversations()
    collator = PaddingCollator(PAD) if mode == "padded" else PackedCollator(PAD, max_length=MAX_LEN)
    data = [{**r, "input_ids": r["input_ids"][:MAX_LEN], "labels": r["labels"][:MAX_LEN]} for r in rows]
    model = loss_mod.install(tiny_model("sdpa_packed"), impl)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = one_sgd_step_args(tmp_path, per_device, accumulation)
    args.activation_offloading = offload
    SFTTrainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    return {n: (p.detach() - before[n]) for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def reference_update():
    _, ref_grads, _ = reference(tiny_model("sdpa_packed"), conversations())
    return {n: -g for n, g in ref_grads.items()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_accumulation_gives_the_per_token_update(tmp_path, mode, reference_update):
    four = trainer_update(tmp_path, mode, per_device=2, accumulation=4)
    assert_same_grads(four, reference_update)
    # and the wrong (per micro-batch) normalization would have been caught by this comparison
    wrong = per_batch_mean_update(conversations(), [[0, 1], [2, 3], [4, 5], [6, 7]])
    assert max(float((wrong[n] - four[n]).abs().max()) for n in wrong) > 100 * TOL["atol"]


@pytest.mark.slow
def test_activation_offloading_keeps_the_update(tmp_path, reference_update):
    assert_same_grads(trainer_update(tmp_path, "packed", 2, 4, offload=True), reference_update)


def test_offload_moves_activations_not_weights():
    model = tiny_model("sdpa")
    batch = collate("padded", conversations())
    hooks = ActivationOffload(model, min_bytes=0)
    with hooks:
        loss = model(**batch).loss
    assert hooks.offloaded_bytes > 0
    loss.backward()
    offloaded = grads(model)
    model(**batch).loss.backward()
    assert_same_grads(offloaded, grads(model))


@pytest.mark.slow
def test_two_processes_give_the_update_of_one_with_the_double_batch(tmp_path, reference_update):
    out = tmp_path / "ddp.pt"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(cmd + [__file__, str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    updates = torch.load(out, weights_only=True)
    for mode in ("padded", "packed"):
        assert_same_grads(updates[mode], reference_update)


def test_eval_loss_unchanged(tmp_path):
    from transformers import TrainingArguments

    from llama_sft.train.trainer import SFTTrainer

    rows = [
        {**r, "input_ids": r["input_ids"][:MAX_LEN], "labels": r["labels"][:MAX_LEN]} for r in conversations()
    ]
    with torch.no_grad():
        total, count = one_at_a_time(tiny_model("sdpa"), rows)
    metrics = {}
    for impl in ("plain", "chunked"):
        args = TrainingArguments(
            output_dir=str(tmp_path / impl),
            per_device_eval_batch_size=3,
            report_to="none",
            remove_unused_columns=False,
            use_cpu=True,
            disable_tqdm=True,
            dataloader_pin_memory=False,
        )
        model = loss_mod.install(tiny_model("sdpa"), impl)
        trainer = SFTTrainer(model=model, args=args, eval_dataset=rows, data_collator=PaddingCollator(PAD))
        metrics[impl] = trainer.evaluate()["eval_loss"]
    assert metrics["chunked"] == metrics["plain"] == pytest.approx(float(total / count), rel=1e-5)


def _ddp_worker(out: str) -> None:
    torch.set_num_threads(1)
    loss_mod.CHUNK_ELEMENTS = VOCAB * 16
    results = {}
    for mode in ("padded", "packed"):
        results[mode] = trainer_update(Path(out).parent / f"rank{os.environ['RANK']}", mode, 4, 1)
    if os.environ["RANK"] == "0":
        torch.save(results, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # The results are written: leave without interpreter teardown, where gloo's and DDP's threads can
    # still abort the process ("terminate called without an active exception", seen in CI).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    _ddp_worker(sys.argv[1])


@pytest.mark.parametrize("kind", ["full", "lora", "lora_head"])
def test_training_forward_keeps_no_tokens_x_vocab_tensor(kind):
    """What makes packed batches (8 full rows) cheap again: no saved tensor grows with tokens x vocab."""
    # hidden 48, intermediate 96: only logit-like tensors have VOCAB (64) columns
    model = with_adapters(kind, lambda: tied_model(hidden=48, tie=False))
    batch = collate("packed", conversations())
    tokens = batch["input_ids"].numel()

    def largest_vocab_wide():
        sizes = [0]

        def pack(t):
            if t.dim() and t.shape[-1] == VOCAB and not isinstance(t, torch.nn.Parameter):
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**batch, num_items_in_batch=10).loss.backward()
        grads(model)
        return max(sizes)

    assert largest_vocab_wide() >= tokens * VOCAB  # plain: the logits (and log-probabilities) are kept
    loss_mod.install(model, "chunked")
    assert largest_vocab_wide() <= 16 * VOCAB  # chunked: one chunk at most (16 positions here)
