"""Training pieces: the labelled-position loss, LoRA/SFT config building, dataset encoding."""

from __future__ import annotations

import copy

import pytest
import torch

from sftlab.chat import prepare_tokenizer
from sftlab.errors import ConfigError
from sftlab.train import (
    build_lora_config,
    build_sft_config,
    encode_dataset,
    labelled_position_loss,
    resolve_token_indices,
)


def _batch(tok, convs):
    ds, _ = encode_dataset(convs, tok, max_length=None, progress=False)
    width = max(len(x) for x in ds["input_ids"])
    ids = torch.full((len(ds), width), tok.pad_token_id)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (x, m) in enumerate(zip(ds["input_ids"], ds["assistant_masks"])):
        ids[r, : len(x)] = torch.tensor(x)
        attn[r, : len(x)] = 1
        labels[r, : len(x)] = torch.where(torch.tensor(m) == 1, torch.tensor(x), -100)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


CONVS = [
    {"id": "a", "messages": [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}]},
    {"id": "b", "messages": [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": "The capital of France is Paris."}]},
]


def test_labelled_position_loss_equals_full_cross_entropy(chat_setup):
    model, tok, _ = chat_setup
    batch = _batch(tok, CONVS)
    with torch.no_grad():
        reference = model(**batch).loss  # transformers' own shifted mean CE over labelled tokens
        ours = labelled_position_loss(model, batch)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_labelled_position_loss_with_lora_and_trainable_end_of_turn(chat_setup):
    from peft import get_peft_model

    model, tok, fmt = chat_setup
    lora = build_lora_config({"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
                              "trainable_token_indices": ["<end_of_turn>"]}, tok, fmt)
    peft_model = get_peft_model(model, lora)
    batch = _batch(tok, CONVS)
    with torch.no_grad():
        reference = peft_model(**batch).loss
    loss = labelled_position_loss(peft_model, batch)
    assert torch.allclose(loss.detach(), reference, atol=1e-5)
    loss.backward()
    token_grads = [p.grad for n, p in peft_model.named_parameters() if "token_adapter" in n and p.grad is not None]
    assert token_grads and any(g.abs().sum() > 0 for g in token_grads)  # the <end_of_turn> row learns


def _chunk_setup(chat_setup, fast_rows):
    from peft import get_peft_model

    from sftlab.train import fast_trainable_tokens

    model, tok, fmt = chat_setup
    lora = build_lora_config({"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False,
                              "trainable_token_indices": ["<end_of_turn>"]}, tok, fmt)
    peft_model = get_peft_model(model, lora)
    if fast_rows:
        assert fast_trainable_tokens(peft_model) == 2
    batch = _batch(tok, CONVS)
    n_labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert n_labelled > 3  # so that chunks of 3 really split the positions
    return peft_model, batch, n_labelled


@pytest.mark.parametrize("fast_rows", [False, True], ids=["peft-rows", "row-only"])
def test_chunked_loss_gives_the_same_loss_and_gradients(chat_setup, fast_rows):
    # With loss_chunk_size (and under gradient checkpointing) the output layer runs a few labelled
    # positions at a time, each chunk's gradients computed at once: loss and every gradient (LoRA
    # and the <end_of_turn> row, which reaches the output layer through the tied embedding) must not change.
    peft_model, batch, _ = _chunk_setup(chat_setup, fast_rows)

    def loss_and_grads(chunk_size):
        peft_model.zero_grad()
        loss = labelled_position_loss(peft_model, batch, chunk_size=chunk_size)
        (loss * 0.5).backward()  # a scaled loss, as gradient accumulation gives: the chunks' gradients scale too
        return loss.detach(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}

    whole, grads = loss_and_grads(None)
    chunked, chunked_grads = loss_and_grads(3)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert grads.keys() == chunked_grads.keys() and any("token_adapter" in n for n in grads)
    for name in grads:
        assert torch.allclose(chunked_grads[name], grads[name], atol=1e-6, rtol=1e-4), name
    with torch.no_grad():  # evaluation: the chunks are only summed
        assert torch.allclose(labelled_position_loss(peft_model, batch, chunk_size=3), whole, atol=1e-6)


def test_chunked_loss_runs_the_output_layer_once_per_chunk(chat_setup):
    # The point of computing each chunk's gradients at once: the 262k-way output layer is not run
    # again in the backward pass, as activation checkpointing would.
    import math

    peft_model, batch, n_labelled = _chunk_setup(chat_setup, fast_rows=True)
    head = peft_model.get_base_model().lm_head
    calls = []
    hook = head.register_forward_hook(lambda *_: calls.append(1))
    try:
        labelled_position_loss(peft_model, batch, chunk_size=3).backward()
    finally:
        hook.remove()
    assert len(calls) == math.ceil(n_labelled / 3)


def test_row_only_trainable_tokens_give_the_same_loss_and_gradients(chat_setup, tmp_path):
    # fast_trainable_tokens replaces PEFT's "copy the whole 262k-row matrix" forward by one that
    # touches only the trained rows: the loss and every gradient must be PEFT's own, and the
    # adapter it saves must load with plain PEFT.
    from peft import PeftModel, get_peft_model

    from sftlab.train import fast_trainable_tokens

    model, tok, fmt = chat_setup
    pristine = copy.deepcopy(model)
    lora = build_lora_config({"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False,
                              "trainable_token_indices": ["<end_of_turn>", "<start_of_turn>"]}, tok, fmt)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # trained rows that differ from the frozen ones, as after training
        for n, p in peft_model.named_parameters():
            if "trainable_tokens_delta" in n:
                p.add_(0.5 * torch.randn_like(p))
    batch = _batch(tok, CONVS)

    def loss_and_grads():
        peft_model.zero_grad()
        loss = labelled_position_loss(peft_model, batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.grad is not None}

    plain, plain_grads = loss_and_grads()
    assert fast_trainable_tokens(peft_model) == 2  # the input embedding and the tied output layer
    fast, fast_grads = loss_and_grads()
    assert torch.allclose(fast, plain, atol=1e-6)
    assert fast_grads.keys() == plain_grads.keys() and any("trainable_tokens_delta" in n for n in fast_grads)
    for name in plain_grads:
        assert torch.allclose(fast_grads[name], plain_grads[name], atol=1e-6, rtol=1e-4), name
    with torch.no_grad():
        with peft_model.disable_adapter():  # disabled adapters read the frozen rows, as the base model does
            assert torch.allclose(labelled_position_loss(peft_model, batch), labelled_position_loss(pristine, batch),
                                  atol=1e-6)
        peft_model.save_pretrained(tmp_path / "adapter")  # PEFT's own format: plain PEFT loads it
        reloaded = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "adapter")
        assert torch.allclose(labelled_position_loss(reloaded, batch), fast, atol=1e-5)


def test_trainable_tokens_by_name_and_unknown_name(chat_setup):
    _, tok, _ = chat_setup
    assert resolve_token_indices(["<end_of_turn>", 3], tok) == [tok.convert_tokens_to_ids("<end_of_turn>"), 3]
    with pytest.raises(ConfigError, match="<nope>"):
        resolve_token_indices(["<nope>"], tok)


def test_new_template_tokens_always_get_trainable_embeddings(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    fmt = prepare_tokenizer(tok, "chatml", allow_new_tokens=True)
    lora = build_lora_config({"r": 4, "target_modules": ["q_proj"]}, tok, fmt)
    assert sorted(lora.trainable_token_indices) == sorted(fmt.new_token_ids)


def test_sft_config_refuses_trl_assistant_only_loss(tmp_path):
    with pytest.raises(ConfigError, match="assistant_only_loss"):
        build_sft_config({"assistant_only_loss": True}, tmp_path, seed=0)
    cfg = build_sft_config({"learning_rate": 1e-3, "bf16": False}, tmp_path, seed=7)
    assert cfg.learning_rate == 1e-3 and cfg.seed == 7 and cfg.report_to in ("none", [], ["none"])


def test_encoding_skips_and_counts_conversations_over_max_length(chat_setup):
    _, tok, _ = chat_setup
    ds, skipped = encode_dataset(CONVS, tok, max_length=20, progress=False)
    lengths = [len(x) for x in encode_dataset(CONVS, tok, max_length=None, progress=False)[0]["input_ids"]]
    assert len(ds) == sum(n <= 20 for n in lengths)
    assert skipped["longer_than_max_length"] == sum(n > 20 for n in lengths) > 0


def test_full_sequence_loss_marks_prompts_as_targets_too(chat_setup):
    # loss_on="all" (the ablation's full-sequence loss): every token is a target, the ids are unchanged.
    _, tok, _ = chat_setup
    replies = encode_dataset(CONVS, tok, max_length=None, progress=False)[0]
    everything = encode_dataset(CONVS, tok, max_length=None, progress=False, loss_on="all")[0]
    assert everything["input_ids"] == replies["input_ids"]
    assert all(all(m) for m in everything["assistant_masks"])
    assert not all(all(m) for m in replies["assistant_masks"])
    with pytest.raises(ConfigError, match="loss_on"):
        encode_dataset(CONVS, tok, max_length=None, progress=False, loss_on="prompts")


def test_disabled_adapter_is_exactly_the_base_model(chat_setup):
    """The book's 'base' systems are evaluated through the trained model with its adapter off."""
    from peft import get_peft_model

    from sftlab.evaluate import adapter_disabled

    model, tok, _ = chat_setup
    batch = _batch(tok, CONVS)
    with torch.no_grad():
        base_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.clone()
    lora = build_lora_config({"r": 4, "lora_alpha": 8, "target_modules": "all-linear",
                              "trainable_token_indices": ["<end_of_turn>"]}, tok, _)
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # pretend training moved every trainable weight
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.5)
        trained = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with adapter_disabled(peft_model):
            disabled = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(trained, base_logits, atol=1e-3)
    assert torch.allclose(disabled, base_logits, atol=1e-6)


@pytest.mark.parametrize("checkpointing, chunk, expected", [
    (False, None, None), (True, None, "default"), (False, 3, 3), (True, 5, 5)])
def test_training_chunks_the_output_layer_under_checkpointing_or_when_the_recipe_says(
        chat_setup, tmp_path, monkeypatch, checkpointing, chunk, expected):
    import sftlab.train as T

    model, tok, fmt = chat_setup
    seen = []
    original = T.labelled_position_loss

    def spy(*args, chunk_size=None, **kwargs):
        seen.append(chunk_size)
        return original(*args, chunk_size=chunk_size, **kwargs)

    monkeypatch.setattr(T, "labelled_position_loss", spy)
    ds, _ = encode_dataset(CONVS * 2, tok, max_length=None, progress=False)
    config = {"lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
              "training": {"max_steps": 2, "per_device_train_batch_size": 2, "bf16": False,
                           "gradient_checkpointing": checkpointing, "save_strategy": "no",
                           "loss_chunk_size": chunk}}
    peft_model, stats = T.train_lora(copy.deepcopy(model), tok, fmt, ds, ds, config, tmp_path, tmp_path / "log.jsonl")
    assert stats["global_steps"] == 2
    assert seen and set(seen) == {T.LOSS_CHUNK_SIZE if expected == "default" else expected}


@pytest.mark.parametrize("bad", [0, -4, 2.5, "256", True])
def test_a_bad_loss_chunk_size_is_an_error_naming_the_key(tmp_path, bad):
    import sftlab.train as T

    with pytest.raises(ConfigError, match="training.loss_chunk_size"):
        T.build_sft_config({"loss_chunk_size": bad}, tmp_path, 0)


def test_memory_saving_paths_train_the_same_adapter_as_the_plain_path(chat_setup, tmp_path):
    """A chunked output layer, checkpointing every other layer and gradient accumulation only
    trade memory for time: two steps from the same start give the same LoRA weights as the plain path."""
    import sftlab.train as T

    model, tok, fmt = chat_setup
    ds, _ = encode_dataset(CONVS * 2, tok, max_length=None, progress=False)
    plain = {"max_steps": 2, "per_device_train_batch_size": 2, "bf16": False, "save_strategy": "no",
             "train_sampling_strategy": "sequential", "learning_rate": 1e-2}
    variants = {"plain": {}, "chunked": {"loss_chunk_size": 3},
                "every-2": {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 2}},
                # the same 2 conversations per step in 2 micro-batches of 1: each is scaled by the
                # step's labelled-token count, not averaged on its own and then halved
                "accum-2": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2}}
    weights = {}
    for name, extra in variants.items():
        torch.manual_seed(0)
        config = {"seed": 0, "lora": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
                  "training": {**plain, **extra}}
        peft_model, _ = T.train_lora(copy.deepcopy(model), tok, fmt, ds, None, config, tmp_path / name,
                                     tmp_path / f"{name}.jsonl")
        weights[name] = {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" in k}
        if name == "every-2":  # half the decoder layers recompute, the others keep their activations
            flags = [layer.gradient_checkpointing for layer in peft_model.get_base_model().model.layers]
            assert len(flags) >= 2 and flags.count(True) == (len(flags) + 1) // 2, flags
    assert weights["plain"]
    # LoRA's B matrices start at zero: they moved, so the comparison below compares trained weights.
    assert max(w.abs().max().item() for k, w in weights["plain"].items() if "lora_B" in k) > 1e-4
    for name in ("chunked", "every-2", "accum-2"):
        diff = max((w - weights["plain"][k]).abs().max().item() for k, w in weights[name].items())
        assert diff < 1e-5, (name, diff)
