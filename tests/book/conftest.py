"""Shared fixtures for the book's tests: a tiny hand-made results folder, a fake run folder, the tiny
model and tokenizer prepared with the Gemma chat format.

`tests/conftest.py` (tiny_model, tiny_tokenizer, three_turn_conversation, ...) is inherited.
Helpers reach the tests as fixtures (`write_results_folder`, `recipe`, `all_systems`): a
test file never imports a conftest.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import yaml

from sftlab.book import lora
from sftlab.book import results as results_mod
from sftlab.chat import prepare_model, prepare_tokenizer
from sftlab.config import config_hash, load_config

RECIPE = {
    "name": "default",
    "seed": 1,
    "model": {"base": "offline:gemma-3-270m", "reference": "offline:smollm2-135m-instruct", "template": "gemma"},
    "data": {"source": "sharegpt", "max_tokens": 256, "train_size": 8, "eval_size": 3},
    "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "trainable_token_indices": ["<end_of_turn>"]},
    "training": {"num_train_epochs": 1, "learning_rate": 1.0e-4, "per_device_train_batch_size": 2,
                 "max_length": 256, "bf16": "auto", "logging_steps": 1},
    "evaluation": {"heldout_size": 3, "ifeval": True},
}
SYSTEMS = ["base_continuation", "base_chat", "sft", "reference"]


def _ci(value, half=0.1):
    return {"value": value, "ci": [value - half, value + half]}


def _heldout(stop, rouge):
    return {"n": 3, "reply_length": {**_ci(40.0, 5), "unit": "words"}, "role_leak_rate": _ci(0.2),
            "distinct_1": {"value": 0.5, "ci": None}, "distinct_2": {"value": 0.7, "ci": None},
            "stop_rate": _ci(stop, 0.05), "rougeL": _ci(rouge, 0.02), "bleu": _ci(0.05, 0.01),
            "embedding_similarity": _ci(0.4)}


def _ifeval(p):
    return {"prompt_level": _ci(p), "instruction_level": _ci(p + 0.1), "n_prompts": 2, "n_instructions": 3,
            "per_type": {"max_words": {**_ci(p), "n": 2}, "no_commas": {**_ci(p), "n": 1}},
            "stop_rate": 0.5}


def _sample(set_, i, stopped):
    replies = {s: {"text": f"reply {i} from {s}", "stopped": stopped.get(s, False), "n_tokens": 7} for s in SYSTEMS}
    row = {"set": set_, "id": f"{set_}-{i}", "prompt": [{"role": "user", "content": f"question {i}"}],
           "reference": f"reference answer {i}" if set_ == "heldout" else None, "replies": replies}
    if set_ == "ifeval":
        row["checks"] = [{"type": "max_words", "n": 10}, {"type": "no_commas"}]
        for s, r in replies.items():
            r["checks_passed"] = [True, s == "sft"]
    return row


def _write_results_folder(root, name="default", recipe=None, systems=SYSTEMS):
    """A minimal but complete project: pyproject.toml, configs/NAME.yaml and results/NAME/."""
    recipe = dict(recipe or RECIPE, name=name)
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (root / "configs").mkdir(exist_ok=True)
    cfg_path = root / "configs" / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    config = load_config(cfg_path)
    out = root / "results" / name
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = {
        "name": name, "config_hash": config_hash(config), "config_path": str(cfg_path),
        "versions": {"python": "3.11", "torch": "2.13", "transformers": "5.24", "peft": "0.21", "trl": "1.16"},
        "hardware": {"cpu_count": 2, "gpu": None, "torch_threads": 2},
        "timings_s": {"train_s": 100.0, "generate_sft_s": 50.0}, "wall_s": 900.0,
        "training": {"train_wall_s": 100.0, "global_steps": 12, "train_loss": 2.1, "trainable_params": 3_797_632,
                     "total_params": 271_895_808, "train_conversations": 8, "train_tokens_per_epoch": 1000,
                     "train_assistant_tokens_per_epoch": 700, "epochs": 1.0, "bf16": True,
                     "tokens_per_second": 90.5},
    }
    (out / "run.json").write_text(json.dumps(run))
    metrics = {
        "systems": {s: {"heldout": _heldout(stop, rouge), "ifeval": _ifeval(p)}
                    for s, stop, rouge, p in [("base_continuation", 0.0, 0.10, 0.0), ("base_chat", 0.0, 0.12, 0.1),
                                              ("sft", 0.6, 0.15, 0.4), ("reference", 0.9, 0.18, 0.6)]
                    if s in systems},
        "heldout_loss": {"base_chat": {"mean_nll": 2.3, "ci": [2.1, 2.5], "perplexity": 9.97, "n_conversations": 3,
                                       "n_tokens": 120},
                         "sft": {"mean_nll": 1.8, "ci": [1.7, 1.9], "perplexity": 6.05, "n_conversations": 3,
                                 "n_tokens": 120}},
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    report = {
        "source": "sharegpt", "n_read": 20, "n_loaded": 15, "n_trimmed": 1,
        "skipped": {"first_not_user": 4, "no_messages": 1}, "skipped_examples": {"first_not_user": ["a_1"]},
        "filters": {"english_only": True, "min_tokens": None, "max_tokens": 256, "min_turns": 1, "max_turns": 3},
        "n_filter_input": 15, "rejected": {"too_many_tokens": 3, "not_english": 1}, "rejected_examples": {},
        "n_kept": 11, "seed": 1, "n_train": 8, "n_eval": 3, "n_unused": 0,
        "turns_histogram": {"1": 8, "2": 3}, "token_lengths": {"min": 20, "median": 90.0, "p90": 200, "max": 250,
                                                               "mean": 100.0},
        "raw": {"turns": [1] * 8 + [2] * 3, "token_lengths": [20, 40, 60, 80, 90, 90, 100, 120, 150, 200, 250]},
        "notes": ["a note"], "encoding_skipped": {"train": {}, "eval": {}},
    }
    (out / "data_report.json").write_text(json.dumps(report))
    log = [{"step": i, "epoch": i / 12, "time_s": 8.0 * i, "loss": 2.5 - 0.05 * i, "grad_norm": 1.0,
            "learning_rate": 1e-4 * min(1, i / 2)} for i in range(1, 13)]
    log.insert(6, {"step": 6, "epoch": 0.5, "time_s": 50.0, "eval_loss": 2.2})
    (out / "train_log.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    samples = [
        _sample("heldout", 1, {"reference": True}),
        _sample("heldout", 2, {"reference": True}),
        _sample("heldout", 3, {"sft": True, "reference": True}),
        _sample("ifeval", 1, {}),
        _sample("ifeval", 2, {"sft": True}),
    ]
    for row in samples:
        row["replies"] = {s: r for s, r in row["replies"].items() if s in systems}
    (out / "samples.jsonl").write_text("\n".join(json.dumps(x) for x in samples) + "\n")
    norms = [{"name": f"layers.{l}.{m}", "layer": l, "module": m, "norm": 0.1 * (l + 1), "relative_norm": 0.01}
             for l in range(2) for m in ("q_proj", "v_proj")]
    (out / "lora_norms.jsonl").write_text("\n".join(json.dumps(x) for x in norms) + "\n")
    return out


# --------------------------------------------------------------------------- the hand-made results folder


@pytest.fixture()
def write_results_folder():
    """write_results_folder(root, name="default", recipe=None, systems=all four) -> results/NAME."""
    return _write_results_folder


@pytest.fixture()
def recipe():
    """The recipe the hand-made results folder was run with (a copy: change it freely)."""
    return copy.deepcopy(RECIPE)


@pytest.fixture()
def all_systems():
    """Every system the hand-made results folder holds, in the book's order."""
    return list(SYSTEMS)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    monkeypatch.delenv(results_mod.RESULTS_ENV, raising=False)
    _write_results_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def results(project):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return results_mod.load_results()


# --------------------------------------------------------------------------- a bare run folder (LoRA norms, samples)


@pytest.fixture()
def fake_results(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    run = root / "results" / "default"
    run.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (run / "config.yaml").write_text("name: default\nmodel:\n  base: offline:gemma-3-270m\n")
    (run / "run.json").write_text("{}")
    rows = []
    for layer in range(3):
        for i, module in enumerate(lora.MODULE_ORDER):
            rows.append({"name": f"m.layers.{layer}.{module}", "layer": layer, "module": module,
                         "norm": 1.0 + layer, "relative_norm": 0.001 * (layer + 1) * (i + 1)})
    (run / "lora_norms.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples = [
        {"set": "heldout", "id": "a", "prompt": [{"role": "user", "content": "Hello, how are you?"}],
         "reference": "I am fine, thank you. The sea is wide and blue.",
         "replies": {"base_chat": {"text": "x", "stopped": False, "n_tokens": 9},
                     "sft": {"text": "y", "stopped": True, "n_tokens": 3}}},
        {"set": "ifeval", "id": "b", "prompt": [{"role": "user", "content": "Hi"}], "reference": None,
         "replies": {"sft": {"text": "z", "stopped": True, "n_tokens": 1}}},
    ]
    (run / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    monkeypatch.delenv("SFTLAB_RESULTS", raising=False)
    monkeypatch.chdir(root / "results")
    return run


# --------------------------------------------------------------------------- the tiny model with the Gemma chat format


@pytest.fixture()
def gemma_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    prepare_tokenizer(tok, "gemma")
    return tok


@pytest.fixture()
def chat_model(tiny_model, gemma_tok):
    fmt = prepare_tokenizer(gemma_tok, "gemma")
    prepare_model(tiny_model, gemma_tok, fmt)
    return tiny_model


# --------------------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """A finished `sftlab run` of the tiny recipe (every file a real run writes), loaded as the book
    loads a run: metrics with paired comparisons, reply categories and the split held-out loss."""
    from tiny_models import write_tiny_recipe

    from sftlab.experiment import run_experiment

    folder = tmp_path_factory.mktemp("tiny-run")
    (folder / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    recipe = write_tiny_recipe(folder, tiny_model_dir)
    out = run_experiment(recipe, results_root=folder / "results", progress=False)
    return results_mod.load_results(str(out), root=folder)
