"""Data tools behind `llama-sft data clean|split-long|dedupe|convert|mix|split`.

Each tool streams records in, writes JSONL out (ShareGPT by default) and counts every record it
changes or drops by reason; `cli.py` wires them into `llama-sft data`.
"""
