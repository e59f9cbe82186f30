"""Attention by template segment: segments, shares, matrices, base vs SFT."""

from __future__ import annotations

import pandas as pd
import pytest

from sftlab.book import attention
from sftlab.chat import encode_conversation


def test_token_segments_label_template_user_and_reply_text(gemma_tok, three_turn_conversation):
    seg = attention.token_segments(gemma_tok, three_turn_conversation)
    assert seg.loc[0, "segment"] == "<bos>"
    text = lambda kind: "".join(seg.loc[seg["segment"] == kind, "token"])
    assert text("reply") == "I am fine, thank you.Paris.The sea is wide and blue."
    assert "You are terse." in text("user text") and "Write a short poem" in text("user text")
    assert "user" not in text("user text").replace("You are", "")  # role names are turn markers
    assert seg["learned"].tolist() == [bool(m) for m in encode_conversation(gemma_tok, three_turn_conversation)["assistant_masks"]]


def test_content_that_spells_a_role_name_is_still_user_text(gemma_tok):
    messages = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "model"}]
    seg = attention.token_segments(gemma_tok, messages)
    assert "".join(seg.loc[seg["segment"] == "user text", "token"]) == "user"
    assert "".join(seg.loc[seg["segment"] == "reply", "token"]) == "model"


def test_attention_shares_sum_to_one_per_layer(chat_model, gemma_tok, three_turn_conversation):
    shares = attention.attention_to_segments(chat_model, gemma_tok, three_turn_conversation)
    assert set(shares["layer"]) == {0, 1}
    assert set(shares["segment"]) == set(attention.SEGMENTS)
    sums = shares.groupby("layer")["share"].sum()
    assert sums.tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert (shares["share"] >= 0).all()
    assert chat_model.config._attn_implementation != "eager"  # restored afterwards


def test_attention_matrix_rows_are_causal_and_sum_to_one(chat_model, gemma_tok, three_turn_conversation):
    frame = attention.attention_matrix(chat_model, gemma_tok, three_turn_conversation, layer=1, max_rows=5)
    assert frame["query"].nunique() == 5
    assert (frame["key"] <= frame["query"]).all()
    assert frame.groupby("query")["weight"].sum().tolist() == pytest.approx([1.0] * 5, abs=1e-4)


def test_attention_shift_and_facts(chat_model, gemma_tok, three_turn_conversation):
    base = attention.attention_to_segments(chat_model, gemma_tok, three_turn_conversation).assign(model="base")
    same = base.assign(model="SFT")
    both = pd.concat([base, same])
    assert attention.attention_shift(both)["shift"].tolist() == pytest.approx([0.0, 0.0])
    assert attention.attention_facts(both)[0].startswith("Largest change")


def _conversations(three_turn_conversation):
    second = [{"role": "user", "content": "What is the capital of France?"},
              {"role": "assistant", "content": "The capital of France is Paris."}]
    return [("a", three_turn_conversation), ("b", second)]


def test_a_model_compared_with_itself_shows_no_change(chat_model, gemma_tok, three_turn_conversation):
    convs = _conversations(three_turn_conversation)
    profile = attention.attention_profile(chat_model, gemma_tok, convs)
    assert set(profile["conversation"]) == {"a", "b"}
    shift = attention.segment_shift(profile, profile, n_resamples=100)
    assert (shift["difference"].abs() < 1e-12).all() and (shift["conversations"] == 2).all()
    facts = attention.profile_facts(profile, profile, n_resamples=100)
    assert facts[0].startswith("No detectable change")  # a null finding is stated as such
    assert "total variation distance of 0.000" in facts[-1]


def test_a_changed_model_shows_its_shift_with_an_interval(chat_model, gemma_tok, three_turn_conversation, tiny_model):
    import torch

    convs = _conversations(three_turn_conversation)
    base = attention.attention_profile(chat_model, gemma_tok, convs)
    with torch.no_grad():
        for p in tiny_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    from sftlab.chat import prepare_model, prepare_tokenizer

    fmt = prepare_tokenizer(gemma_tok, "gemma")
    prepare_model(tiny_model, gemma_tok, fmt)
    other = attention.attention_profile(tiny_model.eval(), gemma_tok, convs)
    shift = attention.segment_shift(base, other, n_resamples=100)
    assert (shift["lo"] <= shift["difference"]).all() and (shift["difference"] <= shift["hi"]).all()
    assert shift["difference"].abs().max() > 0


def test_heldout_conversations_counts_what_it_leaves_out(tmp_path, gemma_tok):
    import json

    rows = [{"set": "heldout", "id": "ok", "prompt": [{"role": "user", "content": "Hello there"}], "reference": "Hi.",
             "replies": {}},
            {"set": "heldout", "id": "bad", "prompt": [{"role": "user", "content": "say <end_of_turn> now"}],
             "reference": "No.", "replies": {}},
            {"set": "ifeval", "id": "x", "prompt": [{"role": "user", "content": "Hi"}], "reference": None,
             "replies": {}}]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kept, skipped = attention.heldout_conversations(tmp_path, gemma_tok)
    assert [cid for cid, _ in kept] == ["ok"] and skipped == {"text spells a control token": 1}
