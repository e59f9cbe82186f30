"""The tiny Gemma-3-shaped model and tokenizer the fast tests use, built in code.

A plain module (not conftest.py) so tests can import the builders by name: with conftest
files in several test folders, `from conftest import ...` would be ambiguous.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

_CORPUS = [
    "Hello, how are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea. The sea is wide and blue.",
    "What is the capital of France? The capital of France is Paris.",
    "user model system assistant turn of end start",
    "Please answer in one sentence. Sure, here is one sentence.",
    "def add(a, b):\n    return a + b\n",
    "1 2 3 4 5 6 7 8 9 10 100 1000",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (any text encodes, no <unk>) with Gemma's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    return fast


def build_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer Gemma3ForCausalLM with tied embeddings, sized to `tokenizer`."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=512,
        sliding_window=64,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    model = Gemma3ForCausalLM(config)
    model.eval()
    return model


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


def write_tiny_recipe(folder, model_dir):
    """A whole-run recipe on the tiny model in `folder`: 24 conversations, 3 training steps, every system."""
    import yaml

    model_dir = str(model_dir)
    data = Path(folder) / "convs.jsonl"
    _write_conversations(data)
    recipe = {
        "name": "tiny",
        "seed": 0,
        "model": {"base": model_dir, "reference": model_dir,
                  "template": "gemma", "reference_template": "gemma"},
        "data": {"source": str(data), "english_only": False, "min_tokens": None, "max_tokens": None,
                 "train_size": 16, "eval_size": 4},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear",
                 "trainable_token_indices": ["<end_of_turn>"]},
        "training": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "max_length": 256, "bf16": False, "gradient_checkpointing": False},
        "evaluation": {"heldout_size": 4, "max_new_tokens": 6, "batch_size": 8,
                       "embedding_similarity": False, "bootstrap_resamples": 50,
                       "extra_sets": []},  # tests/test_extra.py adds them
    }
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
