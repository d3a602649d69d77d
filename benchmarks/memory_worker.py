"""Workers of benchmarks/memory.py, each run in a fresh single-threaded process (a fresh allocator).

- `head_worker`: the loss alone (hidden states -> head -> loss -> gradients, every position supervised:
  the worst case for chunking), plain and chunked alternating in one process.
- `step_worker`: whole training steps of one model, the loss implementations alternating step by step
  in one process (`install(model, impl)` swaps them), so neighbours' load falls on all of them alike.

    python benchmarks/memory_worker.py '{"kind": "head", ...}'   # prints one JSON line
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure_memory import cpu_peak  # noqa: E402

MIB = 1024**2
LLAMA3 = dict(vocab_size=128256, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(model: str, method: str):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if model == "smollm2":
        from llama_sft.model.smollm2 import smollm2_dir

        m = AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32)
    else:
        m = LlamaForCausalLM(LlamaConfig(**LLAMA3, max_position_embeddings=8192, tie_word_embeddings=False))
    m.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM", target_modules=TARGETS
        )
        m = get_peft_model(m, config)
    return m


def chat_labels(seq: int) -> tuple[list[int], list[int], dict]:
    """One row of `seq` tokens: ShareGPT-like conversations (benchmarks/preprocess.py's generator) encoded
    end to end by llama-sft's own pipeline (SmolLM2's tokenizer, chatml with its default system prompt,
    train_on_assistant), so prompts, system prompts and template tokens are masked as in training."""
    import preprocess as prep
    import transformers
    from transformers import AutoTokenizer

    from llama_sft.data.dataset import encode_with_report
    from llama_sft.data.issues import ValidationReport
    from llama_sft.data.templates import get_template
    from llama_sft.data.tokenizer import prepare_tokenizer
    from llama_sft.data.validate import load_conversations
    from llama_sft.model.smollm2 import smollm2_dir

    transformers.logging.set_verbosity_error()
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(str(smollm2_dir())))
    tokenizer.model_max_length = seq
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(prep.sharegpt_mix(64, seed=0), f)
        f.flush()
        conversations = load_conversations(Path(f.name), "sharegpt", template_name="chatml")[0]
    rows, _ = encode_with_report(
        conversations, get_template("chatml"), tokenizer, seq, "train_on_assistant", ValidationReport()
    )
    ids, labels, used = [], [], 0
    for r in rows:
        if len(ids) >= seq:
            break
        ids += list(r["input_ids"])
        labels += list(r["labels"])
        used += 1
    ids, labels = ids[:seq], labels[:seq]
    supervised = sum(x != -100 for x in labels[1:])
    return ids, labels, {"conversations": used, "supervised_share": round(supervised / (seq - 1), 3)}


def step_worker(spec: dict) -> dict:
    """Whole steps (gradient checkpointing, AdamW, 1 row); variants alternate step by step in one process.

    A variant is `plain`, `chunked` (both with the row's own chat labels) or `chunked-all` (every token
    supervised, the chunked loss's worst case; plain costs the same either way: it makes all logits).
    Each step's peak is c10's allocator peak above the step's start, plus what is resident at its start
    (weights, adapters, AdamW states; gradients are freed after each step).
    """
    import torch

    from llama_sft.train.loss import install

    torch.set_num_threads(1)
    model = build(spec["model"], spec["method"])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec["method"] == "lora":
        model.enable_input_require_grads()
    model.train()
    ids, chat, data = chat_labels(spec["seq"])
    ids = torch.tensor([ids])
    labels = {"chat": torch.tensor([chat]), "all": ids.clone()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3 if spec["method"] == "lora" else 1e-4)
    variants = spec["variants"]
    out = {v: {"peak_mib": [], "step_s": [], "cpu_s": [], "losses": [], "grad_norms": []} for v in variants}
    for r in range(spec["warmup"] + spec["steps"]):
        for v in variants if r % 2 == 0 else variants[::-1]:
            install(model, v.split("-")[0])
            lab = labels["all" if v.endswith("-all") else "chat"]
            count = int(lab[:, 1:].ne(-100).sum())
            resident = _resident_bytes(model, opt)
            start, cpu = time.perf_counter(), time.process_time()
            with cpu_peak() as peak:
                loss = model(input_ids=ids, labels=lab, num_items_in_batch=count).loss
                loss.backward()
                norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
                opt.step()
                opt.zero_grad(set_to_none=True)
                elapsed, cpu = (
                    time.perf_counter() - start,
                    time.process_time() - cpu,
                )  # not the profiler's exit
            o = out[v]
            o["losses"].append(float(loss.detach()))
            o["grad_norms"].append(norm)
            del loss
            if r >= spec["warmup"]:
                o["peak_mib"].append((resident + peak["peak_bytes"]) / MIB)
                o["step_s"].append(elapsed)
                o["cpu_s"].append(cpu)
            print(
                json.dumps({"round": r, "variant": v, "loss": o["losses"][-1], "cpu_s": cpu}), file=sys.stderr
            )
    for v, o in out.items():
        assert o["losses"][-1] < o["losses"][0], f"{v}: loss did not fall: {o['losses']}"
        assert all(n > 0 for n in o["grad_norms"]), f"{v}: zero gradient norm: {o['grad_norms']}"
    return {**spec, **data, "threads": torch.get_num_threads(), "rows": out}


def _resident_bytes(model, opt) -> int:
    import torch

    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def head_worker(spec: dict) -> dict:
    """The loss alone; plain and chunked alternate in one process, each block's peak counted separately."""
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    from llama_sft.train.loss import causal_lm_loss, chunk_tokens

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if spec["model"] == "smollm2":
        base = build("smollm2", "full")
        weight = base.lm_head.weight.detach().clone()
        del base
    else:
        weight = torch.randn(LLAMA3["vocab_size"], LLAMA3["hidden_size"]) * 0.02
    vocab, width = weight.shape
    head = torch.nn.Linear(width, vocab, bias=False)
    head.weight = torch.nn.Parameter(weight, requires_grad=spec["method"] == "full")
    tokens = spec["seq"]
    labels = torch.randint(0, vocab, (1, tokens))
    count = tokens - 1
    grads_bytes = 4 * tokens * width + (4 * vocab * width if spec["method"] == "full" else 0)
    impls = tuple(spec.get("impls", ("plain", "chunked")))  # chunked alone: no full logits, no big lock
    hidden = {impl: torch.randn(1, tokens, width, requires_grad=True) for impl in impls}
    rows = {
        impl: {"peak_mib": [], "step_s": [], "cpu_s": [], "losses": [], "grad_norms": []} for impl in hidden
    }
    for r in range(1 + spec["repeats"]):
        for impl in impls if r % 2 == 0 else impls[::-1]:
            h = hidden[impl]
            start, cpu = time.perf_counter(), time.process_time()
            with cpu_peak() as peak:
                if impl == "plain":
                    loss = ForCausalLMLoss(head(h), labels, vocab, num_items_in_batch=count)
                else:
                    loss = causal_lm_loss(h, head, labels, count)
                loss.backward()
                elapsed, cpu = (
                    time.perf_counter() - start,
                    time.process_time() - cpu,
                )  # not the profiler's exit
            with torch.no_grad():
                norm = float(h.grad.norm())
                h -= 1000.0 * h.grad  # a step on the inputs: the loss must fall
            h.grad = None
            head.weight.grad = None
            out = rows[impl]
            out["losses"].append(float(loss.detach()))
            out["grad_norms"].append(norm)
            if r > 0:  # warm-up excluded
                out["peak_mib"].append((peak["peak_bytes"] - grads_bytes) / MIB)
                out["step_s"].append(elapsed)
                out["cpu_s"].append(cpu)
    for impl, out in rows.items():
        assert out["losses"][-1] < out["losses"][0], f"{impl}: loss did not fall: {out['losses']}"
        assert all(n > 0 for n in out["grad_norms"]), f"{impl}: zero gradient norm"
    return {**spec, "vocab": vocab, "hidden": width, "chunk_tokens": chunk_tokens(vocab), "rows": rows,
            "threads": torch.get_num_threads()}  # fmt: skip


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    print(json.dumps(head_worker(job) if job["kind"] == "head" else step_worker(job)))
