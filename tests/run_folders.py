"""A finished run folder in miniature, written in code: what `sftlab rescore` and `sftlab chat`
read before any model loads (config.yaml, run.json, metrics.json, samples.jsonl,
heldout_losses.json, adapter/adapter_config.json and its weights). `rescore` runs on it as it
is; tests break one file at a time."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = ("name: tiny\nseed: 0\nmodel: {base: offline:gemma-3-270m, template: gemma}\ndata: {source: sharegpt}\n"
          "evaluation: {embedding_similarity: false, bootstrap_resamples: 20}\n")
SAMPLES = [
    {"set": "heldout", "id": "a", "prompt": [{"role": "user", "content": "Name a colour."}], "reference": "Blue.",
     "replies": {"sft": {"text": "Red.", "stopped": True}}},
    {"set": "heldout", "id": "b", "prompt": [{"role": "user", "content": "Name a fruit."}], "reference": "Apple.",
     "replies": {"sft": {"text": "Pear, and more", "stopped": False}}},
    {"set": "ifeval", "id": "c", "prompt": [{"role": "user", "content": "Say hi, in lowercase letters only."}],
     "reference": None, "checks": [{"type": "all_lowercase"}], "replies": {"sft": {"text": "hi", "stopped": True}}},
]
LOSSES = {"base_chat": [[10.0, 5, 1.0, 1], [8.0, 4, 0.5, 1]], "sft": [[6.0, 5, 0.2, 1], [5.0, 4, 0.1, 1]]}
ADAPTER_CONFIG = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": "google/gemma-3-270m",
                  "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}

# The files a test may break, relative to the run folder.
FILES = ("config.yaml", "run.json", "metrics.json", "samples.jsonl", "heldout_losses.json",
         "adapter/adapter_config.json", "adapter/adapter_model.safetensors")


def write_run_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(CONFIG)
    (folder / "run.json").write_text(json.dumps({"name": "tiny", "config_hash": "0" * 16}))
    (folder / "metrics.json").write_text(json.dumps({"systems": {"sft": {}}, "comparisons": []}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SAMPLES))
    (folder / "heldout_losses.json").write_text(json.dumps(LOSSES))
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG))
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"weights are not read before the model loads")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, to show that a refused command wrote nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
