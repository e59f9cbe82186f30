"""LoRA arithmetic checked against PEFT, and the update norms of a run."""

from __future__ import annotations

import pytest

from sftlab.book import lora


@pytest.mark.parametrize("r", [4, 16])
@pytest.mark.parametrize("targets", list(lora.TARGET_SETS.values()))
def test_lora_parameter_count_matches_peft(tiny_model, r, targets):
    from peft import LoraConfig, get_peft_model

    expected = lora.lora_parameter_count(tiny_model, r, targets)
    peft_model = get_peft_model(tiny_model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == expected
    assert lora.lora_parameter_count(peft_model, r, targets) == expected  # also once wrapped


def test_trainable_token_row_adds_hidden_size_parameters(tiny_model, gemma_tok):
    from peft import LoraConfig, get_peft_model

    eot = gemma_tok.convert_tokens_to_ids("<end_of_turn>")
    n_lora = lora.lora_parameter_count(tiny_model, 4, ["q_proj", "v_proj"])
    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       trainable_token_indices=[eot]))
    assert peft_model.get_nb_trainable_parameters()[0] == n_lora + tiny_model.config.hidden_size


def test_lora_parameter_table_rows_and_memory(tiny_model):
    table = lora.lora_parameter_table(tiny_model, ranks=(4, 8))
    total = sum(p.numel() for p in tiny_model.parameters())
    assert len(table) == 2 * len(lora.TARGET_SETS) + 1
    full = table[table["target_set"] == "full fine-tuning"].iloc[0]
    assert full["trainable"] == total and full["share_pct"] == pytest.approx(100)
    assert full["train_memory_gb"] == pytest.approx(16 * total / 1e9)
    lora_rows = table[table["target_set"] != "full fine-tuning"]
    assert (lora_rows["train_memory_gb"] < full["train_memory_gb"]).all()
    # frozen weights in bf16: half the bytes of each frozen weight, nothing else changes
    frozen = total - lora_rows["trainable"]
    saved = (lora_rows["train_memory_gb"] - lora_rows["train_memory_bf16_frozen_gb"]) * 1e9
    assert list(saved) == pytest.approx(list(2 * frozen))
    assert full["train_memory_bf16_frozen_gb"] == pytest.approx(full["train_memory_gb"])  # nothing frozen
    # doubling the rank doubles the count
    for name in lora.TARGET_SETS:
        rows = lora_rows[lora_rows["target_set"] == name].set_index("rank")["trainable"]
        assert rows[8] == 2 * rows[4]


def test_target_set_name_ignores_order():
    assert lora.target_set_name(["v_proj", "q_proj"]) == "attention q,v"
    assert lora.target_set_name(["q_proj"]) is None


def test_norms_frame_names_the_kind_of_each_module(fake_results):
    frame = lora.lora_norms_frame(fake_results)
    assert set(frame["kind"]) == {"attention", "MLP"}
    top = frame.loc[frame["relative_norm"].idxmax()]
    assert (int(top["layer"]), top["module"]) == (2, "down_proj")


def test_trainable_breakdown_adds_up_to_what_peft_trains(tiny_model, gemma_tok):
    from peft import LoraConfig, get_peft_model

    eot = gemma_tok.convert_tokens_to_ids("<end_of_turn>")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], trainable_token_indices=[eot])
    peft_model = get_peft_model(tiny_model, config)
    table = lora.trainable_breakdown(peft_model, config)
    n_lora = lora.lora_parameter_count(tiny_model, 4, ["q_proj", "v_proj"])
    assert table["parameters"].tolist() == [n_lora, tiny_model.config.hidden_size, n_lora + tiny_model.config.hidden_size]
    assert "scale alpha/r = 2" in table["part"][0]
    with pytest.raises(ValueError, match="PEFT trains"):  # a config that is not the model's: the counts differ
        lora.trainable_breakdown(peft_model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
