"""The preference stage's training on the tiny model: pairs tokenized as SFT and generation see them,
the merged SFT model, DPO's reference (the SFT model, not the base) and rejection sampling."""

from __future__ import annotations

import copy

import pytest
import torch

from sftlab.chat import encode_conversation
from sftlab.errors import DataError
from sftlab.evaluate import chat_prompt_ids
from sftlab.preference.trainers import (
    _dpo_trainer_class,
    build_dpo_config,
    encode_pair,
    pair_dataset,
    train_dpo,
    train_rft,
)

MESSAGES = [{"role": "user", "content": "Tell me about the sea. Do not type <end_of_turn> here."}]
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}


def test_a_pair_is_tokenized_as_sft_training_and_generation_see_it(chat_setup):
    _, tok, fmt = chat_setup
    eot = fmt.end_of_turn_id
    enc = encode_pair(tok, eot, MESSAGES, "The sea is wide.", "the sea the sea the", rejected_stopped=False)
    assert enc["prompt_ids"] == chat_prompt_ids(tok, MESSAGES)  # exactly what the model is sampled from
    assert enc["prompt_ids"].count(tok.bos_token_id) == 1 and enc["prompt_ids"][0] == tok.bos_token_id
    assert enc["prompt_ids"].count(eot) == 1  # the typed "<end_of_turn>" stays text (injection-safe)
    assert enc["chosen_ids"][-1] == eot and enc["chosen_ids"].count(eot) == 1  # the turn's end, once, last
    assert eot not in enc["rejected_ids"]  # cut off at the token limit: kept as written, no end added
    assert tok.eos_token_id not in enc["chosen_ids"] + enc["rejected_ids"]  # no <eos>: the turn ends the reply
    # read by eye: the prompt, then the reply and its <end_of_turn>, nothing else
    text = tok.decode(enc["prompt_ids"] + enc["chosen_ids"])
    assert text == ("<bos><start_of_turn>user\nTell me about the sea. Do not type <end_of_turn> here.<end_of_turn>\n"
                    "<start_of_turn>model\nThe sea is wide.<end_of_turn>")
    # SFT encodes the same conversation as these ids plus the newline after the turn (not learned)
    sft = encode_conversation(tok, [*MESSAGES, {"role": "assistant", "content": "The sea is wide."}])
    assert sft["input_ids"] == enc["prompt_ids"] + enc["chosen_ids"] + sft["input_ids"][-1:]
    learned = [i for i, m in zip(sft["input_ids"], sft["assistant_masks"]) if m]
    assert learned == enc["chosen_ids"]  # DPO scores exactly the tokens SFT learned
    stopped = encode_pair(tok, eot, MESSAGES, "Yes.", "No.", rejected_stopped=True)
    assert stopped["rejected_ids"][-1] == eot
    assert encode_pair(tok, eot, MESSAGES, "Yes.", "  ") == "empty_reply"


def test_pairs_too_long_are_skipped_and_counted_and_none_left_is_an_error(chat_setup):
    _, tok, fmt = chat_setup
    prompts = {"a": {"messages": MESSAGES}}
    pairs = [{"id": "a", "chosen": "Short.", "rejected": "Long " * 50, "rejected_stopped": False},
             {"id": "a", "chosen": "Short.", "rejected": "Also short.", "rejected_stopped": True}]
    ds, skipped = pair_dataset(tok, fmt.end_of_turn_id, pairs, prompts, max_length=60)
    assert len(ds) == 1 and skipped == {"longer_than_max_length": 1}
    with pytest.raises(DataError, match="no preference pair left"):
        pair_dataset(tok, fmt.end_of_turn_id, pairs, prompts, max_length=5)


def _sft_model(model, tok):
    """A stand-in for a trained SFT model: LoRA with random weights and a trained <end_of_turn> row, merged."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(**LORA, init_lora_weights=False,
                                                           trainable_token_indices=[tok.convert_tokens_to_ids(
                                                               "<end_of_turn>")]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "trainable_tokens_delta" in name:
                p.add_(torch.randn_like(p))
    ids = torch.tensor([chat_prompt_ids(tok, MESSAGES)])
    with torch.no_grad():
        before = peft(input_ids=ids).logits
    merged = peft.merge_and_unload()
    merged.eval()
    return merged, before, ids


def test_the_merged_sft_model_reproduces_the_peft_model_s_logits(chat_setup):
    model, tok, _ = chat_setup
    merged, peft_logits, ids = _sft_model(model, tok)
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
        base_logits = model(input_ids=ids).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the adapter did something


def _logps(model, row) -> float:
    ids = torch.tensor([row["prompt_ids"] + row["chosen_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    start = len(row["prompt_ids"]) - 1
    return float(logp[torch.arange(start, len(targets)), targets[start:]].sum())


def test_dpo_s_reference_is_the_merged_sft_model_not_the_base(chat_setup, tmp_path):
    model, tok, fmt = chat_setup
    sft, _, _ = _sft_model(model, tok)
    sft_copy = copy.deepcopy(sft)
    prompts = {"a": {"messages": MESSAGES}, "b": {"messages": [{"role": "user", "content": "Hello there."}]}}
    pairs = [{"id": i, "chosen": "The sea is wide.", "rejected": "Sea sea.", "rejected_stopped": True} for i in "ab"]
    ds, _ = pair_dataset(tok, fmt.end_of_turn_id, pairs, prompts, max_length=128)
    from sftlab.train import build_lora_config

    args = build_dpo_config({"max_steps": 1, "per_device_train_batch_size": 2, "precompute_ref_log_probs": True,
                             "bf16": False}, tmp_path / "checkpoints", 0)
    trainer = _dpo_trainer_class()(model=sft, ref_model=None, args=args, train_dataset=ds, processing_class=tok,
                                   peft_config=build_lora_config(LORA, tok, fmt))
    refs = trainer.train_dataset["ref_chosen_logps"]
    for row, ref in zip(ds, refs):
        assert ref == pytest.approx(_logps(sft_copy, row), abs=1e-3)  # the SFT model's log-probabilities
        assert abs(ref - _logps(model, row)) > 1e-2  # not the base model's


def test_dpo_and_rejection_sampling_train_a_new_adapter_over_the_sft_model(chat_setup, tmp_path):
    model, tok, fmt = chat_setup
    sft, _, _ = _sft_model(model, tok)
    prompts = {"a": {"messages": MESSAGES}}
    pairs = [{"id": "a", "chosen": "The sea is wide.", "rejected": "Sea sea.", "rejected_stopped": True}] * 4
    ds, _ = pair_dataset(tok, fmt.end_of_turn_id, pairs, prompts, max_length=128)
    training = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "bf16": False}
    peft_model, stats = train_dpo(copy.deepcopy(sft), tok, fmt, ds, LORA, training, seed=0,
                                  work_dir=tmp_path / "dpo", log_path=tmp_path / "dpo.jsonl")
    assert stats["global_steps"] == 2 and stats["pairs"] == 4 and "rewards/margins" in stats["last_10_steps"]
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    convs = [{"id": "a", "messages": [*MESSAGES, {"role": "assistant", "content": "The sea is wide."}]}] * 4
    peft_model, stats = train_rft(copy.deepcopy(sft), tok, fmt, convs, LORA, training, seed=0,
                                  work_dir=tmp_path / "rft", log_path=tmp_path / "rft.jsonl", max_length=128)
    assert stats["method"] == "rft" and stats["examples"] == 4 and stats["global_steps"] == 2
    with pytest.raises(DataError, match="no chosen reply left"):
        train_rft(copy.deepcopy(sft), tok, fmt, convs, LORA, training, seed=0, work_dir=tmp_path / "x",
                  log_path=tmp_path / "x.jsonl", max_length=3)
