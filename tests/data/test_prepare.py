"""Tokenizing once: `llama-sft data prepare` writes the entry `train` reads, entries appear atomically,
and a process that finds the lock held waits for the holder's entry instead of tokenizing again."""

from __future__ import annotations

import json
import threading

from llama_sft.cli.main import main
from llama_sft.data.dataset import publish_cache
from llama_sft.data.prepare import build_dataset_once, cache_entry
from llama_sft.data.templates import get_template


def test_prepare_writes_the_entry_train_reads(tiny_model_dir, sharegpt_file, tmp_path, capsys):
    cache = tmp_path / "shared-cache"
    flags = ["--model_name_or_path", str(tiny_model_dir), "--data_path", str(sharegpt_file)]
    flags += ["--model_max_length", "64", "--data_cache_dir", str(cache), "--learning_rate", "1e-3"]
    assert main(["data", "prepare", *flags]) == 0
    assert "cache miss" in capsys.readouterr().err
    # train's own path to the data (same parser, tokenizer and template) finds that entry
    from llama_sft.config import parse_run_config
    from llama_sft.train.run import build_datasets, tokenizer_and_template

    run = parse_run_config(flags)
    tokenizer, template = tokenizer_and_template(run)
    train, _, _, stats = build_datasets(run, tokenizer, template)
    assert stats["cache"] == "hit" and len(train) == 48
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert [str(p) for p in entries] == [stats["cache_path"]]
    assert json.loads((entries[0] / "meta.json").read_text())["built_by"]["rank"] == "0"


def test_prepare_exits_2_with_the_report_on_bad_data(tiny_model_dir, write_json, tmp_path, capsys):
    bad = write_json("bad.json", [{"id": "x", "conversations": [{"from": "human", "value": ""}]}])
    code = main(["data", "prepare", "--model_name_or_path", str(tiny_model_dir), "--data_path", str(bad)])
    assert code == 2 and "bad.json" in capsys.readouterr().err


def test_publish_is_atomic_and_the_first_writer_wins(tmp_path):
    target = tmp_path / "entry"

    def writer(text):
        return lambda tmp: (tmp / "data").write_text(text)

    publish_cache(target, writer("first"), {"n": 1})
    publish_cache(target, writer("second"), {"n": 2})  # a racing writer: no error, no mixing
    assert (target / "data").read_text() == "first" and json.loads((target / "meta.json").read_text()) == {
        "n": 1
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # the loser's temporary copy is gone


def test_a_waiting_process_reads_the_holders_entry(tiny_tokenizer, sharegpt_file, tmp_path, monkeypatch):
    from filelock import FileLock

    import llama_sft.data.prepare as prepare

    template = get_template("vicuna_v1.1", tiny_tokenizer)
    kwargs = {"cache_dir": tmp_path / "c"}
    entry = cache_entry(
        [sharegpt_file], tiny_tokenizer, template, 64, "train_on_assistant", cache_dir=tmp_path / "c"
    )
    entry.parent.mkdir(parents=True)
    held = FileLock(str(entry) + ".lock")
    held.acquire()  # another process is tokenizing
    built = []
    real_build = prepare.build_dataset
    monkeypatch.setattr(prepare, "build_dataset", lambda *a, **k: built.append(1) or real_build(*a, **k))
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(
            out=build_dataset_once([sharegpt_file], tiny_tokenizer, template, 64, **kwargs)
        )
    )
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not built  # blocked on the lock, not tokenizing
    real_build([sharegpt_file], tiny_tokenizer, template, 64, **kwargs)  # the holder publishes ...
    held.release()  # ... and lets go
    waiter.join(timeout=60)
    assert not waiter.is_alive() and result["out"][2]["cache"] == "hit"
