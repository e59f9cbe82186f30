"""Run recipes: one YAML file holds a whole experiment, and every key is checked.

The `lora` and `training` sections use PEFT's `LoraConfig` and TRL's `SFTConfig`
field names as they are, so a reader who knows those libraries already knows the
file (the alignment-handbook convention). Our own keys are documented once, below.
A misspelt key is an error that names it and suggests the closest valid one:
a silently ignored `learning_rte` would waste a 45-minute run.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

TOP_KEYS = {
    "name": "run name; results go to results/<name>/ (default: the file's stem)",
    "seed": "seed for data sampling, LoRA initialisation and training order",
    "model": "which models to load and how to format chats (see MODEL_KEYS)",
    "data": "conversational data source, filters and split sizes (see sftlab.data.DATA_KEYS)",
    "lora": "peft.LoraConfig fields",
    "training": "trl.SFTConfig fields, plus sftlab's own (see TRAINING_KEYS)",
    "evaluation": "prompt sets, decoding and metrics (see EVAL_KEYS)",
}

MODEL_KEYS = {
    "base": "model spec of the base model: offline:NAME, a Hub id, or a local folder",
    "reference": "model spec of the published post-trained model to compare with (null: none)",
    "template": "chat template for the base model: gemma | chatml",
    "reference_template": "chat template for the reference model (native: its own)",
    "dtype": "weights dtype when loading: float32 | bfloat16 | float16 | auto",
    "allow_new_tokens": "let the template add missing turn tokens (trained via trainable_token_indices)",
}

# sftlab's own `training` keys, beside trl.SFTConfig's fields; `sftlab.train.build_sft_config`
# takes them out before building the SFTConfig.
TRAINING_KEYS = {
    "loss_chunk_size": "labelled positions per output-layer chunk, each chunk's gradients computed at once so "
                       "its logits are freed (null: 256 under gradient checkpointing, otherwise all at once)",
}

EVAL_KEYS = {
    "systems": "which systems to evaluate: base_continuation, base_chat, sft, sft_continuation, reference",
    "heldout_size": "held-out conversations to generate replies for (<= data.eval_size)",
    "ifeval": "run the instruction-following prompt set (true/false)",
    "multiturn": "run the multi-turn probes: does the last reply use a fact from an earlier turn (true/false)",
    "max_new_tokens": "token limit for every reply (greedy decoding)",
    "batch_size": "prompts generated together (left padding)",
    "embedding_similarity": "score replies against references with all-MiniLM-L6-v2",
    "bootstrap_resamples": "resamples for the 95% bootstrap intervals",
    "loss_batches": "held-out batches for the assistant-token loss (null: all)",
    "plain_text": "passages of plain prose (Python's reference pages, no template) on which base and SFT "
                  "loss are compared: what training forgot (0: none; sftlab.plaintext)",
}

# What a run (and `sftlab rescore`) uses for an evaluation key the recipe leaves out.
EVAL_DEFAULTS = {
    "systems": ["base_continuation", "base_chat", "sft", "sft_continuation", "reference"],
    "heldout_size": 40,
    "ifeval": True,
    "multiturn": True,
    "max_new_tokens": 128,
    "batch_size": 8,
    "embedding_similarity": True,
    "bootstrap_resamples": 1000,
    "loss_batches": None,
    "plain_text": 0,
}


def _data_keys() -> dict:
    from .data import DATA_KEYS

    return DATA_KEYS


def _lora_keys() -> set[str]:
    from peft import LoraConfig

    return {f.name for f in dataclasses.fields(LoraConfig)}


def _training_keys() -> set[str]:
    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig)} | set(TRAINING_KEYS)


def _check_keys(section: str, given: dict, allowed) -> None:
    if not isinstance(given, dict):
        raise ConfigError(f"section '{section}' must be a mapping, got {type(given).__name__}")
    for key in given:
        if key not in allowed:
            where = f"{section}.{key}" if section else key
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
            raise ConfigError(f"unknown config key '{where}'{hint}")


def validate(config: dict) -> dict:
    """Check every key of every section; return the config unchanged."""
    _check_keys("", config, TOP_KEYS)
    for section, allowed in (
        ("model", MODEL_KEYS),
        ("data", _data_keys()),
        ("evaluation", EVAL_KEYS),
        ("lora", _lora_keys()),
        ("training", _training_keys()),
    ):
        if section in config and config[section] is not None:
            _check_keys(section, config[section], allowed)
    if "model" in config and "base" not in (config["model"] or {}):
        raise ConfigError("config key 'model.base' is required (e.g. offline:gemma-3-270m)")
    if "data" in config and "source" not in (config["data"] or {}):
        raise ConfigError("config key 'data.source' is required (e.g. sharegpt)")
    return config


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file that must hold a mapping (a recipe, a sweep file); ConfigError names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path) -> dict:
    """Read and validate a YAML recipe; `name` defaults to the file's stem."""
    path = Path(path)
    config = read_yaml_mapping(path)
    config.setdefault("name", path.stem)
    return validate(config)


def config_hash(config: dict) -> str:
    """A short, stable fingerprint of a config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def section(config: dict, name: str) -> dict[str, Any]:
    """A section as a dict, empty when absent."""
    return dict(config.get(name) or {})
