"""What a run leaves behind, next to the weights: the template, the resolved config, a run record,
the loss curve and a short report. Chat, eval, merge and serve read these back instead of guessing.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
from pathlib import Path

import yaml

from ..data.templates import FormatTemplate, JinjaTemplate, Template, get_template
from .callbacks import read_metrics

TEMPLATE_YAML = "llama_sft_template.yaml"
TEMPLATE_JINJA = "llama_sft_template.jinja"
RUN_RECORD = "run_record.json"


def save_template(template: Template, output_dir: Path) -> str:
    """Save the exact template used; returns the file name."""
    if isinstance(template, FormatTemplate):
        data = dataclasses.asdict(template)
        data["stop_strings"] = list(template.stop_strings)
        (output_dir / TEMPLATE_YAML).write_text(
            yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        return TEMPLATE_YAML
    (output_dir / TEMPLATE_JINJA).write_text(template.to_jinja(), encoding="utf-8")
    return TEMPLATE_JINJA


def load_run_template(run_dir: str | Path, tokenizer=None) -> Template:
    """The template a run was trained with (falls back to the tokenizer's chat_template)."""
    run_dir = Path(run_dir)
    if (run_dir / TEMPLATE_YAML).exists():
        return get_template(str(run_dir / TEMPLATE_YAML))
    if (run_dir / TEMPLATE_JINJA).exists():
        source = (run_dir / TEMPLATE_JINJA).read_text(encoding="utf-8")
        return JinjaTemplate("saved", source)
    return get_template("tokenizer", tokenizer)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in (
        "llama-sft",
        "torch",
        "transformers",
        "tokenizers",
        "peft",
        "accelerate",
        "datasets",
        "deepspeed",
        "bitsandbytes",
        "safetensors",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_record(
    output_dir: Path,
    run,
    template: Template,
    template_file: str,
    data_fingerprints: dict,
    data_stats: dict,
    params: dict,
    extra: dict | None = None,
) -> dict:
    record = {
        "template": template.name,
        "template_file": template_file,
        "method": run.lora.method,
        "base_model": run.model.model_name_or_path,
        "model_max_length": run.data.model_max_length,
        "masking": run.data.masking,
        "packing": run.data.packing,
        "data_fingerprints": data_fingerprints,
        "data_stats": data_stats,
        "params": params,
        "versions": library_versions(),
        "git_commit": git_commit(),
        **(extra or {}),
    }
    (output_dir / RUN_RECORD).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    (output_dir / "config.resolved.yaml").write_text(
        yaml.safe_dump(json.loads(json.dumps(run.to_dict(), default=str)), sort_keys=False), encoding="utf-8"
    )
    return record


def read_run_record(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RUN_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def plot_loss(output_dir: Path) -> Path | None:
    metrics = read_metrics(output_dir)
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=False), label="train loss", color="#4c72b0")
    if evals:
        ax.plot(*zip(*evals, strict=False), "o-", label="eval loss", color="#c44e52")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per supervised token)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = output_dir / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    output_dir: Path, record: dict, summary: dict, extra_sections: list[str] | None = None
) -> Path:
    metrics = read_metrics(output_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    lines = [
        f"# llama-sft run: {output_dir.name}",
        "",
        f"- base model: `{record['base_model']}`, method **{record['method']}**, template `{record['template']}`",
        f"- parameters: {record['params'].get('trainable_params', 0):,} trainable of {record['params'].get('total_params', 0):,}",
        f"- data: {record['data_stats'].get('conversations', '?')} conversations, "
        f"{record['data_stats'].get('supervised_tokens', '?')} supervised tokens, "
        f"{record['data_stats'].get('truncated', 0)} truncated",
    ]
    if losses:
        lines.append(f"- train loss: {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log)")
    if evals:
        lines.append(f"- eval loss: {evals[0]:.4f} -> {evals[-1]:.4f}")
    for key, value in summary.items():
        lines.append(f"- {key}: {value}")
    lines += ["", "![loss](loss.png)", ""]
    lines += extra_sections or []
    path = output_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
