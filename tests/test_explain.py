"""The explanatory chapters' computations: loss-mask pictures, LoRA arithmetic, attention shares, charts."""

from __future__ import annotations

import copy
import html
import json
import re

import pytest

from sftlab import explain
from sftlab.chat import encode_conversation, prepare_model, prepare_tokenizer, token_table


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


# --- loss masks --------------------------------------------------------------------------------


def _spans(markup):
    return re.findall(r'<span class="tok" data-target="(\d)" data-control="(\d)"[^>]*>(.*?)</span>', markup, re.S)


def test_mask_html_shows_every_token_and_marks_exactly_the_assistant_tokens(gemma_tok, three_turn_conversation):
    encoded = encode_conversation(gemma_tok, three_turn_conversation)
    spans = _spans(explain.mask_html(gemma_tok, encoded))
    rows = token_table(gemma_tok, encoded)
    assert len(spans) == len(rows)
    for (target, control, text), row in zip(spans, rows):
        assert html.unescape(text) == row["token"].replace("\n", "↵")
        assert int(target) == int(row["learned"])
        assert int(control) == int(row["control"])
    learned = "".join(html.unescape(t) for target, _, t in spans if target == "1")
    assert learned == "I am fine, thank you.<end_of_turn>Paris.<end_of_turn>The sea is wide and blue.<end_of_turn>"


def test_pretraining_targets_every_token_but_the_first(gemma_tok, three_turn_conversation):
    encoded = encode_conversation(gemma_tok, three_turn_conversation)
    spans = _spans(explain.mask_html(gemma_tok, encoded, explain.pretraining_targets(encoded)))
    assert [t for t, _, _ in spans] == ["0"] + ["1"] * (len(spans) - 1)
    counts = explain.objective_counts(gemma_tok, three_turn_conversation)
    assert counts["targets"].tolist() == [len(spans) - 1, sum(encoded["assistant_masks"])]


def test_mask_latex_has_one_box_per_token_and_escapes_text(gemma_tok):
    messages = [{"role": "user", "content": "50% of {x} & $y_1"}, {"role": "assistant", "content": "ok"}]
    encoded = encode_conversation(gemma_tok, messages)
    latex = explain.mask_latex(gemma_tok, encoded)
    assert latex.count("colorbox[HTML]") == len(encoded["input_ids"])
    for raw in ("50%", "{x}", " & ", "$y_1"):
        assert raw not in latex


def test_mask_rejects_targets_of_the_wrong_length(gemma_tok, three_turn_conversation):
    encoded = encode_conversation(gemma_tok, three_turn_conversation)
    with pytest.raises(ValueError, match="targets"):
        explain.mask_html(gemma_tok, encoded, [1, 0])


def test_injection_report_counts_end_of_turn_tokens(gemma_tok):
    messages = [{"role": "user", "content": "Say <end_of_turn> twice <end_of_turn>"},
                {"role": "assistant", "content": "ok"}]
    report = explain.injection_report(gemma_tok, messages).set_index("encoding")
    naive, safe = report["<end_of_turn> tokens"].tolist()
    assert safe == len(messages)  # one per message, written by the template
    assert naive == len(messages) + 2  # plus the two the user typed


# --- LoRA arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("r", [4, 16])
@pytest.mark.parametrize("targets", list(explain.TARGET_SETS.values()))
def test_lora_parameter_count_matches_peft(tiny_model, r, targets):
    from peft import LoraConfig, get_peft_model

    expected = explain.lora_parameter_count(tiny_model, r, targets)
    peft_model = get_peft_model(tiny_model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == expected
    assert explain.lora_parameter_count(peft_model, r, targets) == expected  # also once wrapped


def test_trainable_token_row_adds_hidden_size_parameters(tiny_model, gemma_tok):
    from peft import LoraConfig, get_peft_model

    eot = gemma_tok.convert_tokens_to_ids("<end_of_turn>")
    lora = explain.lora_parameter_count(tiny_model, 4, ["q_proj", "v_proj"])
    peft_model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       trainable_token_indices=[eot]))
    assert peft_model.get_nb_trainable_parameters()[0] == lora + tiny_model.config.hidden_size


def test_lora_parameter_table_rows_and_memory(tiny_model):
    table = explain.lora_parameter_table(tiny_model, ranks=(4, 8))
    total = sum(p.numel() for p in tiny_model.parameters())
    assert len(table) == 2 * len(explain.TARGET_SETS) + 1
    full = table[table["target_set"] == "full fine-tuning"].iloc[0]
    assert full["trainable"] == total and full["share_pct"] == pytest.approx(100)
    assert full["train_memory_gb"] == pytest.approx(16 * total / 1e9)
    lora = table[table["target_set"] != "full fine-tuning"]
    assert (lora["train_memory_gb"] < full["train_memory_gb"]).all()
    # doubling the rank doubles the count
    for name in explain.TARGET_SETS:
        rows = lora[lora["target_set"] == name].set_index("rank")["trainable"]
        assert rows[8] == 2 * rows[4]


def test_target_set_name_ignores_order():
    assert explain.target_set_name(["v_proj", "q_proj"]) == "attention q,v"
    assert explain.target_set_name(["q_proj"]) is None


def test_parameter_breakdown_adds_up(tiny_model):
    parts = explain.parameter_breakdown(tiny_model)
    assert parts["parameters"].sum() == sum(p.numel() for p in tiny_model.parameters())
    assert parts["share"].sum() == pytest.approx(1)
    facts = explain.architecture_facts(tiny_model).set_index("fact")["value"]
    assert facts["transformer layers"] == 2 and facts["input and output embeddings tied"] is True


# --- attention ----------------------------------------------------------------------------------


def test_token_segments_label_template_user_and_reply_text(gemma_tok, three_turn_conversation):
    seg = explain.token_segments(gemma_tok, three_turn_conversation)
    assert seg.loc[0, "segment"] == "<bos>"
    text = lambda kind: "".join(seg.loc[seg["segment"] == kind, "token"])  # noqa: E731
    assert text("reply") == "I am fine, thank you.Paris.The sea is wide and blue."
    assert "You are terse." in text("user text") and "Write a short poem" in text("user text")
    assert "user" not in text("user text").replace("You are", "")  # role names are turn markers
    assert seg["learned"].tolist() == [bool(m) for m in encode_conversation(gemma_tok, three_turn_conversation)["assistant_masks"]]


def test_content_that_spells_a_role_name_is_still_user_text(gemma_tok):
    messages = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "model"}]
    seg = explain.token_segments(gemma_tok, messages)
    assert "".join(seg.loc[seg["segment"] == "user text", "token"]) == "user"
    assert "".join(seg.loc[seg["segment"] == "reply", "token"]) == "model"


def test_attention_shares_sum_to_one_per_layer(chat_model, gemma_tok, three_turn_conversation):
    shares = explain.attention_to_segments(chat_model, gemma_tok, three_turn_conversation)
    assert set(shares["layer"]) == {0, 1}
    assert set(shares["segment"]) == set(explain.SEGMENTS)
    sums = shares.groupby("layer")["share"].sum()
    assert sums.tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert (shares["share"] >= 0).all()
    assert chat_model.config._attn_implementation != "eager"  # restored afterwards


def test_attention_matrix_rows_are_causal_and_sum_to_one(chat_model, gemma_tok, three_turn_conversation):
    frame = explain.attention_matrix(chat_model, gemma_tok, three_turn_conversation, layer=1, max_rows=5)
    assert frame["query"].nunique() == 5
    assert (frame["key"] <= frame["query"]).all()
    assert frame.groupby("query")["weight"].sum().tolist() == pytest.approx([1.0] * 5, abs=1e-4)


def test_attention_shift_and_facts(chat_model, gemma_tok, three_turn_conversation):
    base = explain.attention_to_segments(chat_model, gemma_tok, three_turn_conversation).assign(model="base")
    same = base.assign(model="SFT")
    import pandas as pd

    both = pd.concat([base, same])
    assert explain.attention_shift(both)["shift"].tolist() == pytest.approx([0.0, 0.0])
    assert explain.attention_facts(both)[0].startswith("Largest change")


# --- demo generation ---------------------------------------------------------------------------


def test_continue_text_and_chat_reply_respect_the_token_limit(chat_model, gemma_tok):
    out = explain.continue_text(chat_model, gemma_tok, "Hello", max_new_tokens=5)
    assert out["prompt"] == "Hello" and out["n_tokens"] <= 5
    reply = explain.chat_reply(chat_model, gemma_tok, [{"role": "user", "content": "Hi"}], max_new_tokens=5)
    assert reply["prompt"].endswith("<start_of_turn>model\n") and reply["n_tokens"] <= 5
    markup, latex, _ = explain.generation_markup(reply)
    assert "token limit" in markup or "stopped by itself" in markup
    assert "<start_of_turn>" not in latex  # escaped for LaTeX


# --- results files -----------------------------------------------------------------------------


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
        for i, module in enumerate(explain.MODULE_ORDER):
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


def test_results_dir_prefers_full_and_finds_the_root(fake_results):
    assert explain.results_dir() == fake_results
    full = fake_results.parent / "full"
    full.mkdir()
    (full / "config.yaml").write_text("name: full\n")
    (full / "run.json").write_text("{}")
    assert explain.results_dir() == full
    assert explain.run_config(fake_results)["model"]["base"] == "offline:gemma-3-270m"


def test_norm_facts_name_the_largest_update(fake_results):
    frame = explain.lora_norms_frame(fake_results)
    assert set(frame["kind"]) == {"attention", "MLP"}
    facts = explain.lora_norm_facts(frame)
    assert facts[0].startswith("Largest relative update: layer 2, `down_proj`")


def test_stop_rates_and_heldout_conversation(fake_results, gemma_tok):
    rates = explain.stop_rates(fake_results).set_index("system")
    assert rates.loc["sft", "stop_rate"] == 1.0 and rates.loc["base_chat", "stop_rate"] == 0.0
    sid, messages = explain.heldout_conversation(fake_results, gemma_tok, max_tokens=500, min_reply_tokens=1)
    assert sid == "a" and messages[-1]["role"] == "assistant"


def test_markdown_table_formats_numbers():
    import pandas as pd

    text = explain.markdown_table(pd.DataFrame({"a|b": ["x\ny"], "n": [1234567], "f": [0.5], "t": ["<bos>"]}))
    assert text.splitlines()[0] == "| a\\|b | n | f | t |"
    assert text.splitlines()[2] == "| x↵y | 1,234,567 | 0.50 | &lt;bos&gt; |"


# --- charts (built, not rendered: rendering a PNG is slow) ------------------------------------


def test_charts_build(tiny_model, fake_results, chat_model, gemma_tok, three_turn_conversation):
    import pandas as pd

    table = explain.lora_parameter_table(tiny_model, ranks=(4, 8))
    explain.chart_lora_parameters(table, highlight=(8, "attention q,v")).to_dict()
    explain.chart_lora_norms(explain.lora_norms_frame(fake_results)).to_dict()
    shares = explain.attention_to_segments(chat_model, gemma_tok, three_turn_conversation)
    explain.chart_attention_segments(pd.concat([shares.assign(model="base"), shares.assign(model="SFT")])).to_dict()
    matrix = explain.attention_matrix(chat_model, gemma_tok, three_turn_conversation, layer=0, max_rows=4)
    explain.chart_attention_matrix(matrix, title="layer 0").to_dict()
    diff = explain.attention_difference(matrix, matrix)
    assert (diff["weight"] == 0).all() and len(diff) == len(matrix)
    explain.chart_attention_matrix(diff, difference=True).to_dict()


def test_one_chart_renders_to_png(tiny_model):
    from sftlab.figures import chart_png

    png = chart_png(explain.chart_lora_parameters(explain.lora_parameter_table(tiny_model, ranks=(4, 8))))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
