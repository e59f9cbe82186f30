"""Questions with checkable answers: the packaged set, the matcher, the attempt rule, the few-shot prompt."""

from __future__ import annotations

import json

import pytest

from sftlab import qa
from sftlab.errors import DataError


def item(question, answers, **kw):
    return {"id": "t", "kind": "fact", "question": question, "answers": answers, "provenance": "test", **kw}


def test_packaged_set_is_large_varied_and_sourced():
    items = qa.load_questions()
    assert len(items) >= 150
    assert {i["kind"] for i in items} == set(qa.KINDS)
    assert all(i["provenance"].strip() and i["answers"] for i in items)
    assert len({i["question"].lower() for i in items}) == len(items)


def test_fewshot_examples_are_not_test_questions():
    asked = {" ".join(qa.normalise(i["question"])) for i in qa.load_questions()}
    assert not [q for q, _ in qa.FEWSHOT_EXAMPLES if " ".join(qa.normalise(q)) in asked]


@pytest.mark.parametrize("reply, expected", [
    ("56", True), ("7 times 8 is 56.", True), ("The answer is fifty-six.", True), ("It is 54.", False),
    ("54, 56 or 58", False), ("", False), ("Eight.", False),
])
def test_numbers_exclude_the_question_and_take_the_first_or_last(reply, expected):
    assert qa.match(item("What is 7 times 8?", [56]), reply) is expected


def test_thousands_separators_decimals_and_tolerance():
    assert qa.match(item("What is 2 to the power of 10?", [1024]), "It is 1,024.")
    assert qa.match(item("What is 3.5 plus 2.25?", [5.75]), "3.5 + 2.25 = 5.75")
    miles = item("About how many kilometres are in 10 miles?", [16.09], tolerance=0.2)
    assert qa.match(miles, "About 16 kilometres.") and not qa.match(miles, "About 15.5 km.")
    assert qa.numbers_in("one hundred and twenty-one, twelve, the right one") == [121.0, 12.0]


@pytest.mark.parametrize("reply, expected", [
    ("The Pacific Ocean.", True), ("pacific", True), ("It's the PACIFIC!", True), ("The Atlantic.", False),
    ("Pacifica", False),
])
def test_aliases_case_articles_and_punctuation(reply, expected):
    assert qa.match(item("What is the largest ocean on Earth?", ["Pacific", "Pacific Ocean"]), reply) is expected


def test_accents_do_not_matter():
    assert qa.match(item("What is the capital of Brazil?", ["Brasilia"]), "Brasília.")


def test_choice_replies_that_name_several_options_are_wrong():
    canberra = item("What is the capital of Australia?", ["Canberra"], distractors=["Sydney", "Melbourne"])
    assert qa.match(canberra, "Canberra.")
    assert qa.match(canberra, "Canberra, not Sydney as many think.")
    assert not qa.match(canberra, "Sydney or Canberra.")
    assert not qa.match(canberra, "Sydney. Canberra is the second city.")  # the first named decides
    fruit = item("Which of these is a fruit: a carrot, an apple, or a potato?", ["apple"],
                 distractors=["carrot", "potato"], kind="choice")
    assert qa.match(fruit, "An apple is a fruit; a carrot is a root.")
    assert not qa.match(fruit, "A carrot, an apple, or a potato.")


def test_copied_question_text_earns_nothing():
    q = item("What do we call a person who writes poems and verses for a living?", ["poet"])
    assert qa.match(q, "A poet.")
    assert not qa.match(q, "What do we call a person who writes poems and verses for a living?")
    mammal = item("Which of these is a mammal: a shark, a dolphin, or a trout, the fish?", ["dolphin"],
                  distractors=["shark", "trout"], kind="choice")
    assert not qa.match(mammal, "Which of these is a mammal: a shark, a dolphin, or a trout, the fish?")


@pytest.mark.parametrize("reply, expected", [
    ("Paris.", True), ("The capital is Lyon.", True), ("", False), ("I don't know.", False),
    ("I'm not sure what you mean by capital. Could you clarify?", False), ("Which country do you mean?", False),
    ("Hello! How can I help you today?", False), ("paris paris paris paris paris paris", False),
    ("What is the capital of France?", False),
    ("The capital of France is Paris.\n\nWhat is the capital of France?\n\nThe capital of France is", True),
    ("What is the capital of France?\n\nWhat is the capital of France?", False),
])
def test_attempt_rule(reply, expected):
    assert qa.attempted(reply, prompt="What is the capital of France?") is expected


def test_fewshot_prompt_and_answer_cut():
    prompt = qa.fewshot_prompt("What is the capital of France?")
    assert prompt.startswith(qa.FEWSHOT_HEADER) and prompt.endswith("Q: What is the capital of France?\nA:")
    assert prompt.count("\nA: ") == len(qa.FEWSHOT_EXAMPLES)
    assert qa.fewshot_answer(" Paris\n\nQ: What is 2 plus 2?\nA: 4") == ("Paris", True)
    assert qa.fewshot_answer(" Paris\nQ: next") == ("Paris", True)
    assert qa.fewshot_answer(" Paris is the") == ("Paris is the", False)


@pytest.mark.parametrize("change, message", [
    ({"answers": []}, "'answers' must be a non-empty list"),
    ({"answers": [""]}, "neither a number nor a non-empty string"),
    ({"kind": "trivia"}, "kind must be one of"),
    ({"provenance": ""}, "provenance"),
    ({"answers": ["France"]}, "already written in the question"),
    ({"answers": [7]}, "a number the question already writes"),
    ({"distractors": ["Paris"]}, "both accepted answers and distractors"),
    ({"colour": "red"}, "unknown keys"),
])
def test_bad_records_are_named(tmp_path, change, message):
    record = {**item("What is the capital of France, 7?", ["Paris"]), "id": "qa-bad", **change}
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(item("What is 2 plus 2?", [4]) | {"id": "ok"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=message) as err:
        qa.load_questions(path)
    assert "qa-bad" in str(err.value) and ":2:" in str(err.value)


def test_a_correct_reply_counts_as_an_attempt():
    q = item("What is the capital of France?", ["Paris"])
    values = qa.qa_values([q], [{"text": "Do you mean the city? It is Paris.", "stopped": True}])
    assert values["accuracy"] == [1.0] and values["attempt_rate"] == [1.0]


def test_scores_have_wilson_intervals_and_kinds():
    items = [item("What is 7 times 8?", [56], kind="arithmetic"), item("What is the capital of Japan?", ["Tokyo"])]
    replies = [{"text": "56", "stopped": True}, {"text": "I don't know.", "stopped": True}]
    out = qa.qa_scores(items, replies)
    assert out["accuracy"]["value"] == 0.5 and out["attempt_rate"]["value"] == 0.5
    assert out["accuracy_when_attempted"] == {"value": 1.0, "ci": out["accuracy_when_attempted"]["ci"], "n": 1}
    assert out["per_kind"]["arithmetic"]["value"] == 1.0 and out["per_kind"]["fact"]["value"] == 0.0
    assert 0 < out["accuracy"]["ci"][0] < 0.5 < out["accuracy"]["ci"][1] < 1
