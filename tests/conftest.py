"""Shared fixtures: a tiny Gemma-3-shaped model and tokenizer built in code.

They carry the same special tokens as the real gemma-3-270m tokenizer
(`<bos>`, `<eos>`, `<pad>`, `<start_of_turn>`, `<end_of_turn>`), so unit tests
exercise the real code paths in milliseconds, with no download.
Tests that need the real packaged model or data are marked `slow`.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

# The Hub is unreachable on CI machines; never let a test wait on it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import build_tiny_model, build_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """The tiny model and tokenizer saved as a normal local checkpoint folder."""
    path = tmp_path_factory.mktemp("tiny-gemma")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def chat_setup(tiny_tokenizer, tiny_model):
    """(model, tokenizer, ChatFormat): the tiny pair prepared with the Gemma chat format."""
    import copy

    from sftlab.chat import prepare_model, prepare_tokenizer

    tok = copy.deepcopy(tiny_tokenizer)
    fmt = prepare_tokenizer(tok, "gemma")
    prepare_model(tiny_model, tok, fmt)
    return tiny_model, tok, fmt


@pytest.fixture()
def three_turn_conversation():
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello, how are you?"},
        {"role": "assistant", "content": "I am fine, thank you."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Write a short poem about the sea."},
        {"role": "assistant", "content": "The sea is wide and blue."},
    ]


def _write_conversations(path, n=24):
    topics = ["the sea", "France", "a fox", "numbers", "poems", "the weather"]
    with path.open("w") as f:
        for i in range(n):
            t = topics[i % len(topics)]
            messages = [
                {"role": "user", "content": f"Tell me about {t}, please ({i})."},
                {"role": "assistant", "content": f"Here is a short answer about {t}."},
            ]
            f.write(json.dumps({"id": f"c{i}", "messages": messages}) + "\n")


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_model_dir):
    """A whole-run recipe on the tiny model: 24 conversations, 3 training steps, every system."""
    data = tmp_path / "convs.jsonl"
    _write_conversations(data)
    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"base": str(tiny_model_dir), "reference": str(tiny_model_dir),
                  "template": "gemma", "reference_template": "gemma"},
        "data": {"source": str(data), "english_only": False, "min_tokens": None, "max_tokens": None,
                 "train_size": 16, "eval_size": 4},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
                 "trainable_token_indices": ["<end_of_turn>"]},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "max_length": 256, "bf16": False, "gradient_checkpointing": False},
        "evaluation": {"heldout_size": 4, "max_new_tokens": 6, "batch_size": 8,
                       "embedding_similarity": False, "bootstrap_resamples": 50},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
