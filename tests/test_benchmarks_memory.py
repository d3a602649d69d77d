"""benchmarks/memory.py's bookkeeping: runs measured apart are merged, not overwritten, and a plain peak that
was not measured at a length is scaled from 2048 tokens and labelled so (never passed off as measured)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory  # noqa: E402


def head_run(seq, impls, plain_mib=1000.0, chunked_mib=50.0):
    def row(mib, cpu):
        return {
            "peak_mib": [mib],
            "step_s": [cpu * 2],
            "cpu_s": [cpu],
            "losses": [2.0, 1.0],
            "grad_norms": [1.0],
        }

    rows = {"plain": row(plain_mib, 4.0), "chunked": row(chunked_mib, 3.0)}
    run = {"model": "m", "method": "lora", "seq": seq, "vocab": 100, "chunk_tokens": 16, "repeats": 1}
    run["rows"] = {k: v for k, v in rows.items() if k in impls}
    if impls != ("plain", "chunked"):
        run["impls"] = list(impls)
    return run


def test_chunked_alone_keeps_the_pair_and_scales_plain_with_a_label():
    runs = memory.merge_rows([], [head_run(2048, ("plain", "chunked"))])
    runs = memory.merge_rows(runs, [head_run(8192, ("chunked",), chunked_mib=60.0)])
    runs = memory.merge_rows(
        runs, [head_run(2048, ("plain", "chunked"), plain_mib=1200.0)]
    )  # replaces the first
    runs = memory.merge_rows(
        runs, [head_run(2048, ("chunked",), chunked_mib=50.0)]
    )  # does not replace the pair
    assert len(runs) == 3
    short, long = memory.summarize_heads(runs)
    assert (short["plain_source"], short["plain_logits_mib"], short["cpu_ratio"]) == (
        "measured",
        1200.0,
        0.75,
    )
    assert long["plain_source"] == "scaled from 2048" and long["plain_logits_mib"] == 4800.0
    assert long["logits_ratio"] == 80.0 and long.get("cpu_ratio") is None  # no timing without both
    assert "scaled from 2048" in memory.markdown({"head": [short, long], "step": [], "planner": [], "head_runs": runs,
                                                   "step_runs": []})  # fmt: skip
