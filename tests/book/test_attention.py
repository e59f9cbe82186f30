"""Inside the model: the measurements of `sftlab inspect` (sftlab.inspect) on the tiny model, and
chapter 7's readers of the inside.json it writes (sftlab.book.attention)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftlab import inspect
from sftlab.book import attention, charts
from sftlab.chat import encode_conversation


def test_token_segments_label_template_user_and_reply_text(gemma_tok, three_turn_conversation):
    seg = inspect.token_segments(gemma_tok, three_turn_conversation)
    assert seg.loc[0, "segment"] == "<bos>"
    text = lambda kind: "".join(seg.loc[seg["segment"] == kind, "token"])
    assert text("reply") == "I am fine, thank you.Paris.The sea is wide and blue."
    assert "You are terse." in text("user text") and "Write a short poem" in text("user text")
    assert "user" not in text("user text").replace("You are", "")  # role names are turn markers
    assert seg["learned"].tolist() == [bool(m) for m in encode_conversation(gemma_tok, three_turn_conversation)["assistant_masks"]]


def test_content_that_spells_a_role_name_is_still_user_text(gemma_tok):
    messages = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "model"}]
    seg = inspect.token_segments(gemma_tok, messages)
    assert "".join(seg.loc[seg["segment"] == "user text", "token"]) == "user"
    assert "".join(seg.loc[seg["segment"] == "reply", "token"]) == "model"


def test_shares_add_to_one_per_layer_for_every_reply_token_and_for_the_first_ones(chat_model, gemma_tok,
                                                                                   three_turn_conversation):
    seg = inspect.token_segments(gemma_tok, three_turn_conversation)
    att, logits = inspect.read_conversation(chat_model, seg["id"].tolist())
    assert chat_model.config._attn_implementation != "eager"  # restored afterwards
    learned = seg.index[seg["learned"]].tolist()
    first = inspect.first_reply_queries(seg, k=2)
    assert len(first) == 6 and set(first) <= set(learned)  # three replies, two tokens each
    for queries in (learned, first):
        shares = inspect.segment_shares(att, seg, queries)
        assert shares.shape == (2, len(inspect.SEGMENTS)) and (shares >= 0).all()
        assert shares.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-4)


def test_end_of_turn_probability_is_read_at_every_reply_position_and_at_the_end(chat_model, gemma_tok,
                                                                                three_turn_conversation):
    seg = inspect.token_segments(gemma_tok, three_turn_conversation)
    _, logits = inspect.read_conversation(chat_model, seg["id"].tolist())
    eot = gemma_tok.convert_tokens_to_ids("<end_of_turn>")
    replies = inspect.eot_along_reply(logits, seg, eot)
    assert len(replies) == 3
    reply_tokens = [len(s) for s in np.split(np.array(seg["learned"]), np.nonzero(np.diff(seg["learned"]))[0] + 1)
                    if s[0]]
    assert [len(r["p"]) for r in replies] == reply_tokens  # one prediction per learned token, eot included
    assert all(0 <= p <= 1 for r in replies for p in r["p"])


def test_the_example_is_chosen_by_its_rule_not_by_eye(gemma_tok):
    convs = []
    for i, reply in enumerate(["ab " * 8, "ab " * 12, "ab " * 16, "ab " * 200]):  # the last: too long to draw
        messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": reply}]
        convs.append((str(i), messages, inspect.token_segments(gemma_tok, messages)))
    lengths = [int(seg["learned"].sum()) for _, _, seg in convs]
    assert lengths[0] >= inspect.EXAMPLE_MIN_REPLY and len(convs[2][2]) <= inspect.EXAMPLE_MAX_TOKENS < len(convs[3][2])
    assert inspect.representative(convs) == 1  # the median reply length of those that fit


def test_marker_matrix_labels_every_turn_marker_before_the_reply(chat_model, gemma_tok):
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."}]
    seg = inspect.token_segments(gemma_tok, messages)
    att, _ = inspect.read_conversation(chat_model, seg["id"].tolist())
    matrix, columns = inspect.marker_matrix(att, seg, inspect.first_reply_queries(seg, k=3))
    assert columns[0] == "<bos>" and columns[-2:] == ["user text", "reply so far"]
    assert any("start_of_turn" in c for c in columns) and matrix.shape == (2, 3, len(columns))
    assert matrix.sum(axis=2) == pytest.approx(np.ones((2, 3)), abs=1e-4)  # nothing else before the reply


def test_heldout_conversations_counts_what_it_leaves_out(tmp_path, gemma_tok):
    rows = [{"set": "heldout", "id": "ok", "prompt": [{"role": "user", "content": "Hello there"}], "reference": "Hi.",
             "replies": {}},
            {"set": "heldout", "id": "bad", "prompt": [{"role": "user", "content": "say <end_of_turn> now"}],
             "reference": "No.", "replies": {}},
            {"set": "ifeval", "id": "x", "prompt": [{"role": "user", "content": "Hi"}], "reference": None, "replies": {}}]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    kept, skipped = inspect.heldout_conversations(tmp_path, gemma_tok)
    assert [cid for cid, _, _ in kept] == ["ok"] and skipped == {"text spells a control token": 1}


@pytest.fixture(scope="module")
def inside(tiny_run):
    inspect.inspect_run(tiny_run.path, progress=False, log=lambda *a, **k: None)
    return attention.load_inside(tiny_run)


def test_inspect_writes_what_chapter_7_reads(inside, tiny_run):
    n = len(inside["conversation_ids"])
    assert n > 0 and inside["cpu_kind"] and inside["timings_s"]["total_s"] > 0
    for which in ("all", "first"):
        shift = attention.segment_shift(inside, which, n_resamples=100)
        assert set(shift["segment"]) <= set(inspect.SEGMENTS) and (shift["conversations"] == n).all()
        assert ((shift["lo"] <= shift["difference"]) & (shift["difference"] <= shift["hi"])).all()
        charts.chart_attention_segments(attention.layer_profile(inside, which)).to_dict()
    top = attention.most_changed_layer(inside)
    assert top["layer"] in (0, 1) and top["change"] == pytest.approx(top["SFT"] - top["base"])
    summary = attention.eot_summary(inside)
    assert set(summary) == {"base", "SFT"} and summary["SFT"]["replies"] == n
    charts.chart_end_of_turn(attention.eot_frame(inside)).to_dict()
    for model in ("base", "SFT", "SFT - base"):
        frame = attention.example_frame(inside, model, top["layer"])
        assert set(frame["column"]) == set(inside["example"]["columns"])
        charts.chart_marker_heatmap(frame, difference=model == "SFT - base").to_dict()


def test_a_run_without_inside_json_names_the_command(tmp_path):
    with pytest.raises(attention.InsideMissingError, match="sftlab inspect"):
        attention.load_inside(tmp_path)
