"""The failure analysis rules (sftlab.failures): each kind of failure on a reply written to show it."""

from __future__ import annotations

import pytest

from sftlab.failures import (failure_table, instruction_failure, numbered_lines, trained_examples,
                             wrapped_in_quotes)


@pytest.mark.parametrize("check, reply, kind", [
    ({"type": "all_lowercase"}, "Water the plants on Monday. Thank you!", "ordinary case"),
    ({"type": "all_lowercase"}, "water the plants on Monday, thank you!", "a few capitals"),
    ({"type": "all_uppercase"}, "Wet floor: please walk carefully.", "ordinary case"),
    ({"type": "all_uppercase"}, "WET FLOOR: PLEASE walk CAREFULLY.", "mostly capitals"),
    ({"type": "bullet_count", "n": 3}, "1. Sunscreen\n2. Sunglasses\n3. Towel", "numbered list instead"),
    ({"type": "bullet_count", "n": 3}, "- Sunscreen\n- Towel", "wrong number of bullets"),
    ({"type": "bullet_count", "n": 3}, "Bring sunscreen, sunglasses and a towel.", "no list"),
    ({"type": "n_paragraphs", "n": 2}, "1. Spring is mild.\n2. Flowers bloom.", "numbered list instead"),
    ({"type": "n_paragraphs", "n": 3}, "Spring is mild.\n\nFlowers bloom.", "wrong number of paragraphs"),
    ({"type": "ends_with", "phrase": "Best of luck!"}, "Best of luck! I will miss you.", "phrase elsewhere"),
    ({"type": "ends_with", "phrase": "Best of luck!"}, "I will miss you.", "phrase missing"),
    ({"type": "max_words", "n": 5}, "This reply is a little bit too long.", "other"),
])
def test_each_failure_kind_is_named_by_its_rule(check, reply, kind):
    assert instruction_failure(check, reply, stopped=True) == kind


def test_a_loop_or_a_reply_cut_at_the_limit_is_named_first():
    looping = "Wind,\n" * 40
    assert instruction_failure({"type": "all_lowercase"}, looping, stopped=False) == "loop"
    assert instruction_failure({"type": "ends_with", "phrase": "x"}, "A reply that goes on and", stopped=False) \
        == "cut at the token limit"


def test_the_table_counts_failures_by_kind_and_right_counts_of_numbered_lists():
    samples = [
        {"checks": [{"type": "bullet_count", "n": 3}],
         "replies": {"sft": {"text": "1. a\n2. b\n3. c", "stopped": True, "checks_passed": [False]}}},
        {"checks": [{"type": "bullet_count", "n": 4}],
         "replies": {"sft": {"text": "1. a\n2. b", "stopped": True, "checks_passed": [False]}}},
        {"checks": [{"type": "bullet_count", "n": 2}],
         "replies": {"sft": {"text": "- a\n- b", "stopped": True, "checks_passed": [True]}}},
    ]
    table = failure_table(samples)["bullet_count"]
    assert table["checks"] == 3 and table["passed"] == 1
    assert table["kinds"] == {"numbered list instead": 2} and table["numbered_right_count"] == 1


def test_quotes_lists_and_training_counts():
    assert wrapped_in_quotes('"The whole reply."') and wrapped_in_quotes("\u201cCurly.\u201d")
    assert not wrapped_in_quotes('He said "yes" and left.')
    assert numbered_lines("1. a\n2) b\nnot 3. c") == 2
    per_type = {"bullets": 13, "bullets+lowercase": 13, "lowercase": 13, "numbered": 13}
    assert trained_examples(per_type, "bullet_count") == 26 and trained_examples(per_type, "all_lowercase") == 26
    assert trained_examples(per_type, "unknown_type") == 0


@pytest.mark.parametrize("request_, reply, expected", [
    ("Would the game publisher be able to sue me?", "Sure, the game publisher would be able to sue me if they proved it.", True),
    ("Would the game publisher be able to sue me?", "Yes: the publisher could sue you if the engine is a copy.", False),
    ("My cat won't eat. What should I do?", "If your cat won't eat, see a vet.", False),  # "your", not "my": the model's own voice
    ("I am trying to learn Go. Where do I start?", "Start with the tour. " * 30 + "I am trying to learn Go.", False),  # too late
])
def test_a_reply_that_takes_the_users_first_person_phrase_as_its_own_speaks_as_the_user(request_, reply, expected):
    from sftlab.failures import speaks_as_user

    assert speaks_as_user(request_, reply) is expected


@pytest.mark.parametrize("reply, expected", [
    ("Sure, I'd be happy to help you with that. Could you please provide me with the information you'd like me to share?", True),
    ("Certainly! I'd be glad to help. Just give me a few details about what you need.", True),
    ("Sure, I'd be happy to help. The capital of France is Paris.", False),  # helps, then answers
    ("Could you please provide more details?", False),  # asks without the offer: the categories' deflection
    ("Sure, I'd be happy to help. " + "Here is a long answer. " * 20 + "Let me know what you think.", False),  # long
])
def test_a_short_offer_that_asks_for_what_was_given_is_an_offer_instead_of_an_answer(reply, expected):
    from sftlab.failures import offers_instead_of_answering

    assert offers_instead_of_answering(reply) is expected


def test_reply_failure_counts_read_each_reply_against_the_user_text_it_answers():
    from sftlab.failures import reply_failure_counts

    samples = [
        {"prompt": [{"role": "user", "content": "Would the publisher be able to sue me?"}],
         "replies": {"sft": {"text": "Sure, the publisher would be able to sue me."},
                     "base_chat": {"text": "Sure, I'd be happy to help. Could you please provide the details?"}}},
        {"prompt": [{"role": "user", "content": "Name a colour."}], "replies": {"sft": {"text": "Blue."}}},
    ]
    assert reply_failure_counts(samples, "sft") == {"speaks": 1, "offers": 0, "replies": 2}
    assert reply_failure_counts(samples, "base_chat") == {"speaks": 0, "offers": 1, "replies": 1}  # only rows it answered
