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
