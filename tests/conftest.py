"""Shared fixtures: a tiny Gemma-3-shaped model and tokenizer built in code.

They carry the same special tokens as the real gemma-3-270m tokenizer
(`<bos>`, `<eos>`, `<pad>`, `<start_of_turn>`, `<end_of_turn>`), so unit tests
exercise the real code paths in milliseconds, with no download.
Tests that need the real packaged model or data are marked `slow`.
"""

from __future__ import annotations

import os

import pytest

# The Hub is unreachable on CI machines; never let a test wait on it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import build_tiny_model, build_tiny_tokenizer, write_tiny_recipe  # noqa: E402


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


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_model_dir):
    """A whole-run recipe on the tiny model: 24 conversations, 3 training steps, every system."""
    return write_tiny_recipe(tmp_path, tiny_model_dir)
