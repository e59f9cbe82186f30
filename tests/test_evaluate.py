"""Evaluation pieces: held-out assistant NLL, batched greedy generation, prompt building."""

from __future__ import annotations


import pytest
import torch

from sftlab.evaluate import assistant_nll, chat_prompt_ids, continuation_prompt_ids, generate_replies
from sftlab.train import encode_dataset

CONVS = [
    {"id": str(i), "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    for i, (q, a) in enumerate([("Hello", "Hi there."), ("What is the capital of France?", "Paris."),
                                ("Write a short poem about the sea.", "The sea is wide and blue, and so are you.")])
]


def test_assistant_nll_matches_per_conversation_model_loss(chat_setup):
    model, tok, _ = chat_setup
    ds, _ = encode_dataset(CONVS, tok, max_length=None, progress=False)
    per_conv, mean = assistant_nll(model, ds, batch_size=2, progress=False)
    for row, (nll_sum, n) in zip(ds, per_conv):
        ids = torch.tensor([row["input_ids"]])
        labels = torch.where(torch.tensor([row["assistant_masks"]]) == 1, ids, -100)
        with torch.no_grad():
            expected = model(input_ids=ids, labels=labels).loss.item()
        assert n == sum(row["assistant_masks"][1:]) and nll_sum / n == pytest.approx(expected, abs=1e-4)
    assert mean == pytest.approx(sum(s for s, _ in per_conv) / sum(n for _, n in per_conv))


def test_batched_generation_equals_one_at_a_time(chat_setup):
    model, tok, fmt = chat_setup
    prompts = [chat_prompt_ids(tok, c["messages"][:1]) for c in CONVS]
    kw = dict(stop_ids=fmt.eos_token_ids, max_new_tokens=8, progress=False)
    batched = generate_replies(model, tok, prompts, batch_size=3, **kw)
    single = [generate_replies(model, tok, [p], batch_size=1, **kw)[0] for p in prompts]
    assert batched == single


def test_stop_flag_and_text_end_before_the_stop_token(chat_setup):
    model, tok, fmt = chat_setup
    with torch.no_grad():  # a model that always says "<end_of_turn>" after one token
        head = model.get_output_embeddings()
        model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-10.0)
        model.lm_head.bias[fmt.end_of_turn_id] = 10.0
    out = generate_replies(model, tok, [chat_prompt_ids(tok, CONVS[0]["messages"][:1])],
                           stop_ids=fmt.eos_token_ids, max_new_tokens=8, progress=False)[0]
    assert out == {"text": "", "stopped": True, "n_tokens": 0}


def test_continuation_prompt_has_no_template(chat_setup):
    _, tok, _ = chat_setup
    ids = continuation_prompt_ids(tok, [{"role": "user", "content": "Once upon a time <start_of_turn>"}])
    text = tok.decode(ids)
    assert text.startswith("<bos>Once upon a time") and tok.convert_tokens_to_ids("<start_of_turn>") not in ids


QUESTIONS = ["Hello", "What is the capital of France?", "Write a short poem about the sea.", "Tell me a joke.",
             "Why is the sky blue?", "Name three fruits."]


def _stopping_at_different_lengths(model, tok, fmt, prompts, **kw):
    """The tiny model with a bias towards "<end_of_turn>" that makes its replies stop at different
    lengths (some at once, some later, one never): the case that drops rows between chunks."""
    import copy

    for bias in (0.15, 0.12, 0.18, 0.2, 0.1, 0.25):
        m = copy.deepcopy(model)
        with torch.no_grad():
            head = m.get_output_embeddings()
            m.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
            m.lm_head.weight.copy_(head.weight)
            m.lm_head.bias.zero_()
            m.lm_head.bias[fmt.end_of_turn_id] = bias
        whole = generate_replies(m, tok, prompts, chunk_tokens=None, **kw)
        stops = {r["n_tokens"] for r in whole if r["stopped"]}
        if len(stops) >= 3 and not all(r["stopped"] for r in whole):
            return m, whole
    raise AssertionError("no bias made the tiny model's replies stop at different lengths")


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_generation_in_chunks_that_drop_finished_rows_gives_the_same_replies(chat_setup, chunk):
    # Rows stop at different lengths and leave the batch between chunks; one runs on to the
    # limit, past the tiny model's 64-token sliding window.
    model, tok, fmt = chat_setup
    prompts = [chat_prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    kw = dict(stop_ids=fmt.eos_token_ids, max_new_tokens=70, progress=False, batch_size=6)
    model, whole = _stopping_at_different_lengths(model, tok, fmt, prompts, **kw)
    assert generate_replies(model, tok, prompts, chunk_tokens=chunk, **kw) == whole


def test_chunked_generation_stops_rows_at_their_own_stop_token(chat_setup):
    model, tok, fmt = chat_setup
    eot = fmt.end_of_turn_id
    prompts = [chat_prompt_ids(tok, c["messages"][:1]) for c in CONVS]
    with torch.no_grad():  # every reply stops at once, inside the first chunk
        head = model.get_output_embeddings()
        model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-10.0)
        model.lm_head.bias[eot] = 10.0
    out = generate_replies(model, tok, prompts, stop_ids=fmt.eos_token_ids, max_new_tokens=9,
                           chunk_tokens=4, progress=False)
    assert out == [{"text": "", "stopped": True, "n_tokens": 0}] * 3
