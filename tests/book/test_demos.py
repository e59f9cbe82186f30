"""Live demos: generating with the tiny model, and a run's stop rates."""

from __future__ import annotations

from sftlab.book import demos


def test_continue_text_and_chat_reply_respect_the_token_limit(chat_model, gemma_tok):
    out = demos.continue_text(chat_model, gemma_tok, "Hello", max_new_tokens=5)
    assert out["prompt"] == "Hello" and out["n_tokens"] <= 5
    reply = demos.chat_reply(chat_model, gemma_tok, [{"role": "user", "content": "Hi"}], max_new_tokens=5)
    assert reply["prompt"].endswith("<start_of_turn>model\n") and reply["n_tokens"] <= 5
    markup, latex, _ = demos.generation_markup(reply)
    assert "token limit" in markup or "stopped by itself" in markup
    assert "<start_of_turn>" not in latex  # escaped for LaTeX


def test_stop_rates(fake_results):
    # the held-out conversations chapter 7 reads are tested in tests/book/test_attention.py (sftlab.inspect)
    rates = demos.stop_rates(fake_results).set_index("system")
    assert rates.loc["sft", "stop_rate"] == 1.0 and rates.loc["base_chat", "stop_rate"] == 0.0
