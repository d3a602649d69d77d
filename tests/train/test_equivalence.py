"""Proof that batching changes only the speed: for a tiny fp32 LLaMA, the loss and the gradients of a
padded, pad-to-max or packed batch equal the token-weighted loss of the same conversations run one at
a time (to 1e-5), conversations in a packed row cannot see each other, and the Trainer's update is
the same per-token mean with gradient accumulation 1 or 4 and with 1 or 2 (gloo) processes.

This file is also the worker of the two-process test: `torchrun ... test_equivalence.py OUT MODE...`.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_sft.data.encode import IGNORE_INDEX
from llama_sft.train.collator import PaddingCollator
from llama_sft.train.packing import PackedCollator, PackedDataset, register_packed_attention

VOCAB, PAD, MAX_LEN = 64, 0, 48
IMPLS = ["eager", "sdpa", "sdpa_packed"]
MODES = ["none", "padded", "packed", "prepacked"]
TOL = dict(rtol=1e-5, atol=1e-5)


def conversations(n: int = 8, seed: int = 0) -> list[dict]:
    """Varied lengths and masks: prompt-masked replies, a supervised first token (train_on_all), one
    conversation with nothing supervised, one longer than MAX_LEN (truncated by every collator)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = [3, 40, 9, 17, 60, 5, 26, 12, 33, 7][i % 10]
        ids = [rng.randint(1, VOCAB - 1) for _ in range(length)]
        if i == 2:
            labels = [IGNORE_INDEX] * length
        elif i % 3 == 1:
            labels = list(ids)
        else:
            cut = length // 3
            labels = [IGNORE_INDEX] * cut + ids[cut:]
        rows.append({"input_ids": ids, "labels": labels, "length": length, "sample_index": i})
    return rows


def tiny_model(impl: str = "sdpa", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    register_packed_attention()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=PAD,
    )  # use_cache stays True, the default: packing must not rely on it
    config._attn_implementation = impl
    return LlamaForCausalLM(config)


def collate(mode: str, rows: list[dict]) -> dict:
    rows = [dict(r) for r in rows]
    if mode == "none":
        batch = PaddingCollator(PAD, max_length=MAX_LEN)(rows)
    elif mode == "padded":
        batch = PaddingCollator(PAD)(
            [{**r, "input_ids": r["input_ids"][:MAX_LEN], "labels": r["labels"][:MAX_LEN]} for r in rows]
        )
    elif mode == "packed":
        batch = PackedCollator(PAD, max_length=MAX_LEN)(rows)
    else:
        packs = PackedDataset(rows, MAX_LEN)
        batch = PackedCollator(PAD, max_length=MAX_LEN)([packs[i] for i in range(len(packs))])
    batch.pop("sample_index", None)
    return batch


def one_at_a_time(model, rows: list[dict]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of each conversation alone (truncated to MAX_LEN), and the count."""
    total, count = torch.zeros(()), 0
    for r in rows:
        ids = torch.tensor([r["input_ids"][:MAX_LEN]])
        labels = torch.tensor(r["labels"][:MAX_LEN][1:])
        logits = model(input_ids=ids).logits[0, :-1]
        total = total + torch.nn.functional.cross_entropy(
            logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        count += int(labels.ne(IGNORE_INDEX).sum())
    return total, count


def grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def reference(model, rows):
    total, count = one_at_a_time(model, rows)
    loss = total / count
    loss.backward()
    return loss.detach(), grads(model), count


def assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_batch_loss_and_grads_equal_one_at_a_time(impl, mode):
    model, rows = tiny_model(impl), conversations()
    ref_loss, ref_grads, count = reference(model, rows)
    batch = collate(mode, rows)
    assert int(batch["labels"][..., 1:].ne(IGNORE_INDEX).sum()) == count  # what the Trainer counts
    loss = model(**batch, num_items_in_batch=count).loss
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref_loss, **TOL)
    assert_same_grads(grads(model), ref_grads)
    if mode in ("packed", "prepacked"):
        assert batch["input_ids"].shape[0] < len(rows)  # it really packed


def test_lora_gradients_equal_one_at_a_time():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model("sdpa_packed"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    rows = conversations()
    _, ref_grads, count = reference(model, rows)
    assert ref_grads and all("lora_" in n for n in ref_grads)
    model(**collate("packed", rows), num_items_in_batch=count).loss.backward()
    assert_same_grads(grads(model), ref_grads)


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_conversations_do_not_see_each_other(impl):
    model = tiny_model(impl).eval()
    short, long = conversations(2, seed=3)  # 3 and 40 tokens: one row, the longer first (best-fit decreasing)
    collator = PackedCollator(PAD, max_length=MAX_LEN)

    def row_logits(first, second):
        batch = collator([dict(second), dict(first)])
        assert batch["input_ids"].shape[0] == 1 and batch["input_ids"][0, 0] == first["input_ids"][0]
        batch.pop("sample_index")
        with torch.no_grad():
            out = model(**batch).logits[0]
        n = len(first["input_ids"])
        return out[:n], out[n : n + len(second["input_ids"])]

    def changed(c):
        return {**c, "input_ids": [(t + 7) % VOCAB or 1 for t in c["input_ids"]]}

    long_logits, short_logits = row_logits(long, short)
    assert torch.equal(
        row_logits(changed(long), short)[1], short_logits
    )  # the second sees nothing of the first
    assert torch.equal(row_logits(long, changed(short))[0], long_logits)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([short["input_ids"]])).logits[0]
    torch.testing.assert_close(short_logits, alone, **TOL)  # positions restart: as if it were alone


# --- the Trainer: gradient accumulation and processes -----------------------------------------------------------


def one_sgd_step_args(tmp_path, per_device: int, accumulation: int):
    """TrainingArguments for one plain-SGD step (lr 1, no clipping or decay), so that the parameter
    change is exactly minus the gradient; gloo when launched by torchrun."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
        ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
    )


def trainer_update(
    tmp_path, mode: str, per_device: int, accumulation: int, rows=None
) -> dict[str, torch.Tensor]:
    """Parameter change after one SGD step (lr 1, no clipping) of SFTTrainer over all `rows`."""
    from llama_sft.train.trainer import SFTTrainer

    rows = rows if rows is not None else conversations()
    data = PackedDataset(rows, MAX_LEN) if mode == "prepacked" else rows
    collator = PaddingCollator(PAD) if mode == "padded" else PackedCollator(PAD, max_length=MAX_LEN)
    if mode == "padded":
        data = [{**r, "input_ids": r["input_ids"][:MAX_LEN], "labels": r["labels"][:MAX_LEN]} for r in rows]
    model = tiny_model("sdpa_packed")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = one_sgd_step_args(tmp_path, per_device, accumulation)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
    assert trainer.model_accepts_loss_kwargs and args.average_tokens_across_devices
    trainer.train()
    return {n: (p.detach() - before[n]) for n, p in model.named_parameters()}


def per_batch_mean_update(rows, groups) -> dict[str, torch.Tensor]:
    """What normalizing per micro-batch would give: the mean of per-group token means (the bug to rule out)."""
    model = tiny_model("sdpa_packed")
    for group in groups:
        total, count = one_at_a_time(model, [rows[i] for i in group])
        (total / count / len(groups)).backward()
    return {n: -g for n, g in grads(model).items()}


@pytest.fixture(scope="module")
def reference_update():
    model = tiny_model("sdpa_packed")
    _, ref_grads, _ = reference(model, conversations())
    return {n: -g for n, g in ref_grads.items()}  # SGD, lr 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["padded", "packed"])
def test_accumulation_1_and_4_give_the_per_token_update(tmp_path, mode, reference_update):
    one = trainer_update(tmp_path, mode, per_device=8, accumulation=1)
    four = trainer_update(tmp_path, mode, per_device=2, accumulation=4)
    assert_same_grads(one, reference_update)
    assert_same_grads(four, reference_update)


def test_prepacked_accumulation_gives_the_per_token_update(tmp_path, reference_update):
    packs = len(PackedDataset(conversations(), MAX_LEN))
    assert_same_grads(
        trainer_update(tmp_path, "prepacked", per_device=1, accumulation=packs), reference_update
    )


def test_per_batch_normalization_would_be_caught(reference_update):
    # The micro-batches of accumulation 4 hold unequal token counts, so the wrong normalization differs.
    wrong = per_batch_mean_update(conversations(), [[0, 1], [2, 3], [4, 5], [6, 7]])
    diff = max(float((wrong[n] - reference_update[n]).abs().max()) for n in wrong)
    assert diff > 100 * TOL["atol"]


@pytest.mark.slow
def test_two_processes_give_the_update_of_one_with_the_double_batch(tmp_path, reference_update):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(out),
        "padded",
        "packed",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    updates = torch.load(out)
    for mode in ("padded", "packed"):
        # each rank holds 4 conversations with different token counts: only a global per-token mean matches
        assert_same_grads(updates[mode], reference_update)


# --- the eval loss -----------------------------------------------------------------------------------------------


def test_eval_loss_is_per_supervised_token(tmp_path):
    from transformers import TrainingArguments

    from llama_sft.train.trainer import SFTTrainer

    model = tiny_model("sdpa").eval()
    with torch.no_grad():
        model.lm_head.weight *= 30  # peaked predictions: labels set to the best (worst) guess cost ~0 (a lot)
    rng, rows = random.Random(5), []
    for i, (length, easy) in enumerate([(30, True), (25, True), (4, False), (3, False)]):
        ids = [rng.randint(1, VOCAB - 1) for _ in range(length)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        guess = (logits.argmax(-1) if easy else logits.argmin(-1)).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] + guess, "sample_index": i})
    with torch.no_grad():
        total, count = one_at_a_time(model, rows)
        means = [float(t / c) for t, c in (one_at_a_time(model, rows[i : i + 2]) for i in (0, 2))]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_eval_batch_size=2,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = SFTTrainer(
        model=model, args=args, eval_dataset=rows, data_collator=PaddingCollator(PAD, max_length=MAX_LEN)
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(float(total / count), rel=1e-5)
    assert metrics["eval_supervised_tokens"] == count == 58
    assert sum(means) / 2 > 2 * metrics["eval_loss"]  # what the base Trainer reports: the mean of batch means


def _ddp_worker(out: str, modes: list[str]) -> None:
    torch.set_num_threads(1)
    results = {}
    for mode in modes:
        results[mode] = trainer_update(
            Path(out).parent / f"rank{os.environ['RANK']}", mode, per_device=4, accumulation=1
        )
    if os.environ["RANK"] == "0":
        torch.save(results, out)
    # transformers 5 leaves the process group to the script (Trainer.end); without this gloo can abort at exit
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # The results are written: leave without interpreter teardown, where gloo's and DDP's threads can
    # still abort the process ("terminate called without an active exception", seen in CI).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _ddp_worker(sys.argv[1], sys.argv[2:])
