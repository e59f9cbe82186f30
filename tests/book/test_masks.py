"""Loss-mask pictures, objectives, template injection, token tables."""

from __future__ import annotations

import html
import re

import pytest

from sftlab.book import masks
from sftlab.chat import encode_conversation, token_table


def _spans(markup):
    return re.findall(r'<span class="tok" data-target="(\d)" data-control="(\d)"[^>]*>(.*?)</span>', markup, re.DOTALL)


def test_mask_html_shows_every_token_and_marks_exactly_the_assistant_tokens(gemma_tok, three_turn_conversation):
    encoded = encode_conversation(gemma_tok, three_turn_conversation)
    spans = _spans(masks.mask_html(gemma_tok, encoded))
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
    spans = _spans(masks.mask_html(gemma_tok, encoded, masks.pretraining_targets(encoded)))
    assert [t for t, _, _ in spans] == ["0"] + ["1"] * (len(spans) - 1)
    counts = masks.objective_counts(gemma_tok, three_turn_conversation)
    assert counts["targets"].tolist() == [len(spans) - 1, sum(encoded["assistant_masks"])]


def test_mask_latex_has_one_box_per_token_and_escapes_text(gemma_tok):
    messages = [{"role": "user", "content": "50% of {x} & $y_1"}, {"role": "assistant", "content": "ok"}]
    encoded = encode_conversation(gemma_tok, messages)
    latex = masks.mask_latex(gemma_tok, encoded)
    assert latex.count("colorbox[HTML]") == len(encoded["input_ids"])
    for raw in ("50%", "{x}", " & ", "$y_1"):
        assert raw not in latex


def test_mask_rejects_targets_of_the_wrong_length(gemma_tok, three_turn_conversation):
    encoded = encode_conversation(gemma_tok, three_turn_conversation)
    with pytest.raises(ValueError, match="targets"):
        masks.mask_html(gemma_tok, encoded, [1, 0])


def test_injection_report_counts_end_of_turn_tokens(gemma_tok):
    messages = [{"role": "user", "content": "Say <end_of_turn> twice <end_of_turn>"},
                {"role": "assistant", "content": "ok"}]
    report = masks.injection_report(gemma_tok, messages).set_index("encoding")
    naive, safe = report["<end_of_turn> tokens"].tolist()
    assert safe == len(messages)  # one per message, written by the template
    assert naive == len(messages) + 2  # plus the two the user typed


def test_example_conversation_prefers_multi_turn(results):
    results.samples[1]["prompt"] = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                    {"role": "user", "content": "c"}]
    conv = masks.example_conversation(results)
    assert conv["id"] == "heldout-2" and conv["messages"][-1]["role"] == "assistant"


def test_learned_spans_are_the_masked_runs():
    class Tok:
        def decode(self, ids):
            return "".join(chr(96 + i) for i in ids)

    enc = {"input_ids": [1, 2, 3, 4, 5], "assistant_masks": [0, 1, 1, 0, 1]}
    assert masks.learned_spans(Tok(), enc) == ["bc", "e"]


def test_token_frame_labels_are_ids_or_minus_100():
    rows = [{"position": 0, "id": 2, "token": "<bos>", "learned": False, "control": True},
            {"position": 1, "id": 7, "token": "Hi", "learned": True, "control": False}]
    df = masks.token_frame(rows)
    assert list(df["label"]) == [-100, 7] and list(df["control token"]) == ["yes", ""]


def test_token_strips_can_wrap_in_html(gemma_tok, three_turn_conversation):
    # Spans with nothing between them give a browser no place to break a line: one strip ran to
    # 3,933 px. A <wbr> after every token lets it wrap inside the column.
    from sftlab.book import masks
    from sftlab.chat import encode_conversation, token_table

    encoded = encode_conversation(gemma_tok, three_turn_conversation)
    html, _ = masks.token_strip(token_table(gemma_tok, encoded))
    assert html.count("<wbr>") == len(encoded["input_ids"])
    panel = masks.mask_html(gemma_tok, encoded)
    assert panel.count("<wbr>") == len(encoded["input_ids"]) and 'class="sftlab-tokens"' in panel
