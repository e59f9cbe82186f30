"""Reply categories: each rule on hand-made cases taken from real replies."""

from __future__ import annotations

import pytest

from sftlab.categories import CATEGORIES, canned, category, category_counts


@pytest.mark.parametrize("reply, stopped, prompt, expected", [
    ("\u200b", True, "", "empty"),
    ("   \n ", False, "", "empty"),
    ("Explain quantum computing in simple terms please now vuonna\n", False,
     "Explain quantum computing in simple terms please now", "echo"),
    ("Rain,\n" * 40, False, "Write a poem about rain.", "loop"),
    ("I'm sorry, I'm not sure what you mean by \"cpp\". Could you please provide more context?", True, "cpp",
     "deflection"),
    ("I'm sorry, but I'm not sure what you're asking. Could you please clarify your question?", True, "x",
     "deflection"),
    ("Hello! How can I help you today?", True, "hello this is just a test", "greeting"),
    ("Hello there! How can I assist you today?", True, "", "greeting"),
    ("Sure, I can help you with that. Please let me know what you need.", True, "", "greeting"),
    ("Hello! Paris is the capital of France, and it is famous for its museums.", True, "", "answer"),
    ("The compiler translates source code into machine code before the program runs.", False, "", "cut"),
    ("The compiler translates source code into machine code before the program runs.", True, "", "answer"),
])
def test_each_rule(reply, stopped, prompt, expected):
    assert category(reply, stopped=stopped, prompt=prompt) == expected


def test_a_reply_that_restates_the_question_then_answers_is_an_answer():
    prompt = "Explain how to boil an egg without using any commas."
    reply = ("To boil an egg without using any commas you can follow these steps. Put the egg in water. "
             "Heat the water until it boils. Wait ten minutes and cool the egg in cold water.")
    assert category(reply, stopped=True, prompt=prompt) == "answer"


def test_a_deflection_inside_a_long_answer_still_counts_as_deflection():
    reply = ("Could you please provide more context? Here is a guess: old batteries go to a collection point, "
             "never into household waste, because their metals can be recovered and reused.")
    assert category(reply, stopped=True) == "deflection"


def test_counts_keep_every_category_in_order():
    counts = category_counts(["answer", "greeting", "answer"])
    assert list(counts) == list(CATEGORIES) and counts["answer"] == 2 and counts["loop"] == 0
    with pytest.raises(ValueError, match="unknown"):
        category_counts(["nonsense"])


def test_canned_means_deflection_or_greeting():
    assert [c for c in CATEGORIES if canned(c)] == ["deflection", "greeting"]
