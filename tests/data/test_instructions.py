"""Verifiable-instruction examples built from conversations: each type's rewrite follows its
check, what cannot be rewritten is skipped by reason, the mix is seeded, and the training
phrasings stay apart from the evaluation prompts."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from sftlab.data import validate_messages
from sftlab.data.instructions import (
    COMBINATIONS,
    ID_SUFFIX,
    INSTRUCTION_TYPES,
    SIZES,
    TYPE_NAMES,
    VALUES,
    make_example,
    mix_instructions,
    render_instruction,
    sentence_spans,
)
from sftlab.errors import ConfigError
from sftlab.ifeval import CHECKS, count_sentences, load_prompts, score_reply
from sftlab.metrics import count_words


def conv(request: str, reply: str, cid: str = "abc_0", history: int = 0) -> dict:
    earlier = []
    for i in range(history):
        earlier += [{"role": "user", "content": f"Earlier question number {i}?"},
                    {"role": "assistant", "content": f"Earlier answer number {i}."}]
    return {"id": cid, "messages": [*earlier, {"role": "user", "content": request},
                                    {"role": "assistant", "content": reply}]}


PROSE = conv(
    "How do I bake bread at home?",
    "Sure! Baking bread at home is easy, fun and rewarding. First, mix flour, water, yeast and salt "
    "in a large bowl. Then knead the dough for about ten minutes until it feels smooth. Let it rise "
    "for an hour in a warm place.\n\nAfter that, shape the loaf and let it rise again. Bake it at 220 "
    "degrees for thirty minutes. Let the loaf cool before slicing it.\n\nEnjoy your homemade bread!",
    history=1,
)
CODE = conv("Show me hello world in Python.",
            "Here is the program, printing a greeting:\n```python\nprint('Hello, World!')\n```\n"
            "Run it with python3 and it prints the greeting on your terminal.")
SHORT = conv("Is the sky blue?", "Yes.")
LONG_SENTENCE = conv("Describe the sea.", " ".join(["The sea"] + ["and the waves"] * 60) + ".")
TABLE = conv("Compare cats and dogs.", "Here is a comparison of both animals:\n| cat | dog |\n| --- | --- |\n"
             "| quiet | loud |\nCats sleep a lot during the day. Dogs need long walks every single day.")


def record_of(example: dict) -> dict:
    return {"id": example["id"], "prompt": example["messages"][-2]["content"], "checks": example["instruction_checks"]}


def assert_valid_example(example: dict, original: dict) -> None:
    assert isinstance(example, dict), example
    assert example["id"] == original["id"] + ID_SUFFIX
    assert validate_messages(example["messages"]) is None
    assert example["messages"][:-2] == original["messages"][:-2]  # earlier turns untouched
    request = original["messages"][-2]["content"]
    assert example["messages"][-2]["content"].startswith(request)
    assert len(example["messages"][-2]["content"]) > len(request) + 10  # an instruction was appended
    scored = score_reply(record_of(example), example["messages"][-1]["content"])
    assert scored["instruction_results"] and all(scored["instruction_results"]), (example, scored)


# --------------------------------------------------------------------------- the types


def test_there_are_at_least_15_types_each_with_3_phrasings_and_a_real_check():
    assert len(INSTRUCTION_TYPES) >= 15
    for name, spec in INSTRUCTION_TYPES.items():
        assert spec.name == name and spec.check in CHECKS
        assert len(set(spec.phrasings)) >= 3, name
    assert len({spec.check for spec in INSTRUCTION_TYPES.values()}) == len(INSTRUCTION_TYPES)


@pytest.mark.parametrize("name", sorted(INSTRUCTION_TYPES))
@pytest.mark.parametrize("seed", range(4))
def test_every_type_rewrites_a_prose_reply_to_pass_its_check(name, seed):
    example = make_example(PROSE, name, random.Random(seed))
    assert_valid_example(example, PROSE)
    assert example["instruction_type"] == name
    assert [c["type"] for c in example["instruction_checks"]] == [INSTRUCTION_TYPES[name].check]


@pytest.mark.parametrize("seed", range(6))
def test_what_each_rewrite_does(seed):
    reply = PROSE["messages"][-1]["content"]

    def new(name):
        example = make_example(PROSE, name, random.Random(seed))
        return example["messages"][-1]["content"], example["instruction_checks"][0]

    text, _ = new("lowercase")
    assert text == reply.lower()
    text, _ = new("uppercase")
    assert text == reply.upper()
    text, _ = new("no_commas")
    assert "," not in text and text.split() == reply.replace(",", "").split()
    text, check = new("max_words")
    assert reply.startswith(text) and text.endswith((".", "!")) and CHECKS["max_words"](text, check["n"])
    text, check = new("min_words")
    assert text == reply and check["n"] in SIZES["min_words"]
    for name, pattern in (("bullets", r"[-*] \S"), ("numbered", r"\d+[.)] \S")):
        text, check = new(name)
        lines = text.splitlines()
        assert len(lines) == check["n"] and all(re.match(pattern, line) for line in lines)
        assert all(line[2:].strip() in reply or line[3:].strip() in reply for line in lines)  # the reply's sentences
    text, check = new("paragraphs")
    assert len(text.split("\n\n")) == check["n"] and text.split() == reply.split()  # regrouped, nothing lost
    text, _ = new("quotation")
    assert text == f'"{reply}"'
    text, _ = new("json")
    body = re.sub(r"^```json\n|\n```$", "", text)
    assert list(json.loads(body).values()) == [reply]
    text, _ = new("title")
    title = re.match(r"<<([^<>]+)>>\n\n", text).group(1)
    assert set(title.lower().split()) <= {"bake", "bread", "home"} and text.endswith(reply)
    text, check = new("starts_with")
    assert check["phrase"] in VALUES["openers"] and text.startswith(check["phrase"] + " Baking bread")
    text, check = new("ends_with")
    assert check["phrase"] in VALUES["closers"] and text == f"{reply}\n\n{check['phrase']}"
    text, check = new("keywords")
    assert text == reply and all(re.search(rf"\b{w}\b", reply, re.IGNORECASE) for w in check["words"])
    text, check = new("avoid_words")
    assert text == reply and not any(re.search(rf"\b{w}\b", reply, re.IGNORECASE) for w in check["words"])
    text, check = new("postscript")
    assert check == {"type": "postscript", "marker": "P.S."}
    assert text.endswith("\n\nP.S. Enjoy your homemade bread!") and "\n\nEnjoy" not in text  # the last line moved
    text, check = new("max_sentences")
    assert reply.startswith(text) and count_sentences(text) <= check["n"]


def test_the_instruction_goes_on_the_request_line_or_after_a_blank_line():
    one_line = make_example(PROSE, "lowercase", random.Random(0))["messages"][-2]["content"]
    assert one_line.startswith("How do I bake bread at home? ") and "\n" not in one_line
    multi = conv("Fix this:\n    x = 1 +", "It needs a second operand: x = 1 + 2 would work fine here.")
    prompt = make_example(multi, "starts_with", random.Random(0))["messages"][-2]["content"]
    assert prompt.startswith("Fix this:\n    x = 1 +\n\n")


@pytest.mark.parametrize("name", ["lowercase", "uppercase", "no_commas", "max_words", "bullets", "numbered",
                                  "paragraphs", "quotation", "max_sentences"])
def test_rewrites_that_would_break_code_skip_replies_with_a_code_fence(name):
    assert make_example(CODE, name, random.Random(0)) == "has_code_fence"


@pytest.mark.parametrize("name", ["json", "title", "starts_with", "ends_with", "keywords", "avoid_words", "postscript"])
def test_rewrites_that_keep_code_intact_accept_code_replies(name):
    example = make_example(CODE, name, random.Random(0))
    assert_valid_example(example, CODE)
    assert "print('Hello, World!')" in example["messages"][-1]["content"] or name == "json"


@pytest.mark.parametrize(
    "case, name, reason",
    [
        (SHORT, "min_words", "too_short"),
        (SHORT, "bullets", "too_few_sentences"),
        (SHORT, "numbered", "too_few_sentences"),
        (SHORT, "paragraphs", "too_few_paragraphs"),
        (SHORT, "keywords", "no_keywords"),
        (SHORT, "max_sentences", "no_sentence_to_keep"),
        (conv("Hi?", "Hello there, how can I help you today?"), "title", "no_title_words"),
        (LONG_SENTENCE, "max_words", "sentence_over_word_limit"),
        (TABLE, "bullets", "has_table"),
        (TABLE, "paragraphs", "has_table"),
        (TABLE, "max_words", "has_table"),
        (TABLE, "max_sentences", "has_table"),
        (conv("Go.", "Line one\nline two"), "paragraphs", "too_few_paragraphs"),
        ({"id": "x", "messages": [{"role": "user", "content": "Hi"}]}, "lowercase", "invalid_conversation"),
    ],
)
def test_inapplicable_cases_are_skipped_with_a_reason(case, name, reason):
    assert make_example(case, name, random.Random(0)) == reason


def test_a_reply_that_only_copies_the_request_fails_the_echo_proof_check():
    request = "Please repeat after me the quick brown fox jumps over the lazy sleeping dog today."
    assert make_example(conv(request, request), "lowercase", random.Random(0)) == "fails_check"


def test_avoid_words_is_skipped_when_every_candidate_is_in_the_reply():
    reply = " ".join(VALUES["fillers"]) + " words."
    assert make_example(conv("Ok.", reply), "avoid_words", random.Random(0)) == "no_absent_words"


def test_an_unknown_type_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown instruction type"):
        make_example(PROSE, "shout", random.Random(0))


def _limit_of(example: dict) -> dict:
    return next(c for c in example["instruction_checks"] if c["type"] in ("max_words", "max_sentences"))


def _length(text: str, check_type: str) -> int:
    return count_words(text) if check_type == "max_words" else count_sentences(text)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", ["max_words", "max_sentences", "max_words+no_commas", "max_sentences+uppercase"])
def test_binding_limits_always_cut_the_reply(name, seed):
    ex = make_example(PROSE, name, random.Random(seed), binding_limits=True)
    assert_valid_example(ex, PROSE)
    limit = _limit_of(ex)
    own = _length(PROSE["messages"][-1]["content"], limit["type"])
    assert _length(ex["messages"][-1]["content"], limit["type"]) <= limit["n"] < own


def test_a_limit_drawn_from_every_size_can_leave_the_reply_whole_and_a_binding_one_cannot():
    # A 40-word reply: "at most 50/80/120/150 words" holds already, so the example shows the
    # model nothing about keeping short; only "at most 30 words" makes the rewrite cut it.
    reply = ("Paris is the capital of France and its largest city. It lies on the Seine in the north. "
             "About two million people live in the city itself. Its museums, cafes and old streets draw "
             "visitors from all over the world every year.")
    c = conv("Tell me about Paris.", reply)
    assert 30 < count_words(reply) < 50
    loose = [make_example(c, "max_words", random.Random(seed)) for seed in range(20)]
    assert any(ex["messages"][-1]["content"] == reply for ex in loose)
    binding = [make_example(c, "max_words", random.Random(seed), binding_limits=True) for seed in range(20)]
    assert all(_limit_of(ex)["n"] == 30 and count_words(ex["messages"][-1]["content"]) <= 30 for ex in binding)
    short = conv("Tell me about Paris.", "Paris is the capital of France. It lies on the Seine.")
    assert make_example(short, "max_words", random.Random(0), binding_limits=True) == "within_every_limit"
    assert make_example(short, "max_sentences", random.Random(0), binding_limits=True) == "within_every_limit"


def test_a_mix_with_binding_limits_cuts_every_limited_reply_and_says_so():
    convs = [{**PROSE, "id": f"p{i}_0"} for i in range(60)]
    out, report = mix_instructions(convs, share=1.0, seed=2, binding_limits=True)
    assert report["binding_limits"] is True
    limited = [ex for ex in out if any(c["type"] in ("max_words", "max_sentences") for c in ex["instruction_checks"])]
    assert len(limited) >= 4
    for ex in limited:
        limit = _limit_of(ex)
        assert _length(ex["messages"][-1]["content"], limit["type"]) <= limit["n"] < _length(
            PROSE["messages"][-1]["content"], limit["type"])
    with pytest.raises(ConfigError, match="binding_limits"):
        mix_instructions(convs, share=0.5, seed=0, binding_limits="yes")


@pytest.mark.parametrize("name", ["max_words", "max_sentences"])
def test_a_cut_reply_never_ends_on_a_bare_list_marker_or_a_colon(name):
    # "1. Mix the flour." counts as two sentences ("1." and the rest), so a cut after the
    # marker would leave "...\n2." at the end; the rewrite backs off to the last full sentence.
    reply = ("Baking bread takes a few steps that anyone can follow at home. Here is what to do:\n"
             "1. Mix the flour and water.\n2. Knead the dough well for ten minutes.\n3. Bake it until golden.")
    c = conv("How do I bake bread?", reply)
    examples = [make_example(c, name, random.Random(seed), binding_limits=True) for seed in range(20)]
    cuts = {ex["messages"][-1]["content"] for ex in examples}
    assert cuts <= {reply[: reply.index(end) + len(end)] for end in ("at home.", "and water.", "ten minutes.")}
    assert any(cut.endswith("and water.") for cut in cuts)  # 30 words end on "2.": backed off to here


def test_sentence_spans_agree_with_count_sentences():
    text = 'Hi. "How are you?" she asked.\n- eggs\n- milk\n\nDone!'
    spans = sentence_spans(text)
    assert len(spans) == count_sentences(text)
    assert [text[a:b] for a, b in spans][:2] == ["Hi.", '"How are you?"']


# --------------------------------------------------------------------------- combinations

CONTRADICTORY = [{"lowercase", "uppercase"}, {"json", "bullets"}, {"json", "numbered"}, {"json", "quotation"},
                 {"json", "paragraphs"}, {"bullets", "numbered"}, {"min_words", "max_words"},
                 {"keywords", "avoid_words"}, {"quotation", "postscript"}, {"json", "postscript"}]


def test_combinations_are_known_types_and_never_contradictory():
    assert len(COMBINATIONS) >= 8 and len(set(COMBINATIONS)) == len(COMBINATIONS)
    for a, b in COMBINATIONS:
        assert a in INSTRUCTION_TYPES and b in INSTRUCTION_TYPES and a != b
        assert {a, b} not in CONTRADICTORY
    assert set(TYPE_NAMES) == set(INSTRUCTION_TYPES) | {f"{a}+{b}" for a, b in COMBINATIONS}


@pytest.mark.parametrize("pair", COMBINATIONS, ids="+".join)
@pytest.mark.parametrize("seed", range(3))
def test_every_combination_passes_both_checks(pair, seed):
    name = "+".join(pair)
    example = make_example(PROSE, name, random.Random(seed))
    assert_valid_example(example, PROSE)
    assert [c["type"] for c in example["instruction_checks"]] == [INSTRUCTION_TYPES[p].check for p in pair]


def test_a_combination_is_skipped_when_either_part_does_not_apply():
    assert make_example(CODE, "bullets+lowercase", random.Random(0)) == "has_code_fence"
    assert make_example(SHORT, "min_words+postscript", random.Random(0)) == "too_short"


# --------------------------------------------------------------------------- the mix


def corpus(n: int = 40) -> list[dict]:
    """Prose conversations with distinct ids, every fifth one a code reply."""
    base = [PROSE, PROSE, PROSE, PROSE, CODE]
    return [{**base[i % 5], "id": f"c{i}_0"} for i in range(n)]


def test_mix_replaces_the_stated_share_in_place_and_keeps_the_rest():
    convs = corpus(40)
    out, report = mix_instructions(convs, share=0.25, seed=3)
    assert len(out) == len(convs)
    replaced = [i for i, (a, b) in enumerate(zip(convs, out)) if a is not b]
    assert len(replaced) == report["n_replaced"] == round(0.25 * 40) == report["n_target"]
    for i, (old, new) in enumerate(zip(convs, out)):
        if i in replaced:
            assert new["id"] == old["id"] + ID_SUFFIX
            assert_valid_example(new, old)
            assert score_reply(record_of(new), new["messages"][-1]["content"])["prompt_level"]
        else:
            assert new is old
    assert sum(report["per_type"].values()) == report["n_replaced"]
    assert {out[i]["instruction_type"] for i in replaced} == set(report["per_type"])
    for name, eid in report["examples"].items():
        assert any(c["id"] == eid and c["instruction_type"] == name for c in out)
    assert report["share"] == 0.25 and report["seed"] == 3 and report["n_conversations"] == 40
    assert all(isinstance(n, int) and n > 0 for n in report["skipped"].values())


def test_mix_is_deterministic_for_a_seed_and_changes_with_it():
    convs = corpus(40)
    first, report1 = mix_instructions(convs, share=0.5, seed=7)
    again, report2 = mix_instructions(convs, share=0.5, seed=7)
    assert first == again and report1 == report2
    other, _ = mix_instructions(convs, share=0.5, seed=8)
    assert other != first


def test_mix_balances_the_types_and_falls_back_when_one_does_not_apply():
    convs = [{**PROSE, "id": f"p{i}_0"} for i in range(len(TYPE_NAMES))]
    _, report = mix_instructions(convs, share=1.0, seed=0)
    assert report["n_replaced"] == len(TYPE_NAMES)
    assert set(report["per_type"]) == set(TYPE_NAMES) and set(report["per_type"].values()) == {1}
    code_only = [{**CODE, "id": f"k{i}_0"} for i in range(10)]
    _, report = mix_instructions(code_only, share=1.0, seed=0, types=["lowercase", "json"])
    assert report["per_type"] == {"json": 10} and report["skipped"]["has_code_fence"] >= 1


def test_mix_counts_conversations_no_type_applies_to_and_draws_others():
    convs = [SHORT | {"id": "s_0"}, PROSE | {"id": "p_0"}]
    out, report = mix_instructions(convs, share=0.5, seed=1, types=["min_words"])
    assert report["n_replaced"] == 1 and out[1]["id"] == "p_0" + ID_SUFFIX and out[0] is convs[0]
    assert report["skipped"].get("no_type_applies", 0) <= 1


def test_mix_with_share_zero_changes_nothing_and_bad_arguments_are_config_errors():
    convs = corpus(10)
    out, report = mix_instructions(convs, share=0.0, seed=0)
    assert out == convs and report["n_replaced"] == 0 and report["per_type"] == {}
    for bad in (-0.1, 1.5, "half", True):
        with pytest.raises(ConfigError, match="share"):
            mix_instructions(convs, share=bad, seed=0)
    with pytest.raises(ConfigError, match="unknown instruction type"):
        mix_instructions(convs, share=0.5, seed=0, types=["lowercase", "whisper"])


def _instruction_sentences(out: list[dict], convs: list[dict]) -> list[str]:
    return [ex["messages"][-2]["content"][len(c["messages"][-2]["content"]):].strip()
            for ex, c in zip(out, convs) if ex is not c]


def test_more_phrasings_draws_from_the_wider_set_only_when_asked():
    convs = corpus(80)
    first = {t for spec in INSTRUCTION_TYPES.values() for t in spec.phrasings}
    more = {t for spec in INSTRUCTION_TYPES.values() for t in spec.more_phrasings}
    assert all(len(spec.more_phrasings) >= 4 for spec in INSTRUCTION_TYPES.values()) and not first & more

    def pattern(template):  # the phrasing as a regex, any text where a placeholder was
        return re.compile(".+?".join(re.escape(part) for part in re.split(r"{\w+}", template)))

    def uses(sentences, templates):
        return sum(any(pattern(t).search(s) for t in templates) for s in sentences)

    out, report = mix_instructions(convs, share=1.0, seed=3)
    plain = _instruction_sentences(out, convs)
    assert "more_phrasings" not in report and uses(plain, more) == 0
    out, report = mix_instructions(convs, share=1.0, seed=3, more_phrasings=True)
    wide = _instruction_sentences(out, convs)
    assert report["more_phrasings"] is True and uses(wide, more) >= len(wide) // 4
    with pytest.raises(ConfigError, match="more_phrasings"):
        mix_instructions(convs, share=0.5, seed=0, more_phrasings="yes")


def test_mixed_conversations_still_make_a_training_dataset():
    from sftlab.data import to_dataset

    out, _ = mix_instructions(corpus(10), share=0.5, seed=0)
    ds = to_dataset(out)
    assert ds.column_names == ["id", "messages"] and len(ds) == 10
    assert sum(i.endswith(ID_SUFFIX) for i in ds["id"]) == 5


# --------------------------------------------------------------------------- generalisation, not recall


def _normalise(text: str) -> str:
    return re.sub(r"\d+", "#", " ".join(text.lower().split()))


def _words6(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", _normalise(text))
    return {tuple(words[i : i + 6]) for i in range(len(words) - 5)}


def _rendered_phrasings() -> list[str]:
    """Every phrasing of every type (both sets), with every argument value its rewrite can produce."""
    values = {
        "n": sorted({n for sizes in SIZES.values() for n in sizes}),
        "words": [["ocean"], ["kitchen", "window"], ["bread", "leaves", "station"]],
        "phrase": VALUES["openers"] + VALUES["closers"],
        "marker": ["P.S."],
        "bullet": ["-", "*"],
    }
    out = []
    for spec in INSTRUCTION_TYPES.values():
        for template in spec.wordings(more=True):  # the first set and the wider one
            names = sorted(set(re.findall(r"{(\w+)}", template)))
            for combo in itertools.product(*(values[k] for k in names)):
                for spell in (False, True):
                    out.append(render_instruction(template, dict(zip(names, combo)), spell=spell))
    return out


def test_no_training_phrasing_repeats_an_evaluation_instruction():
    rendered = [_normalise(r) for r in _rendered_phrasings()]
    assert len(rendered) > 200
    eval_prompts = [p["prompt"] for p in load_prompts()]
    sentences = {_normalise(s) for p in eval_prompts for s in re.split(r"(?<=[.!?])\s+", p) if s.strip()}
    assert len(sentences) > 60
    for sentence in sentences:
        hits = [r for r in rendered if sentence == r or sentence in r]
        assert not hits, f"evaluation sentence {sentence!r} appears in training phrasing {hits[0]!r}"
    eval_grams = set().union(*(_words6(p) for p in eval_prompts))
    for r in rendered:
        shared = _words6(r) & eval_grams
        assert not shared, f"training phrasing {r!r} shares {' '.join(next(iter(shared)))!r} with an evaluation prompt"


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_sharegpt_conversations_give_examples_of_every_type_that_all_pass():
    from sftlab.data import filter_conversations, load_conversations

    kept = filter_conversations(load_conversations("sharegpt", progress=False).conversations,
                                english_only=True, max_turns=3).kept
    assert len(kept) > 3000
    sample = random.Random(0).sample(kept, 3000)
    out, report = mix_instructions(sample, share=1.0, seed=0)
    examples = [c for c in out if "instruction_checks" in c]
    assert len(examples) == report["n_replaced"] >= 0.95 * len(sample)
    passed = [score_reply(record_of(c), c["messages"][-1]["content"])["prompt_level"] for c in examples]
    assert all(passed), f"{passed.count(False)} of {len(passed)} emitted examples fail their checks"
    assert all(validate_messages(c["messages"]) is None for c in examples)
    missing = set(TYPE_NAMES) - set(report["per_type"])
    assert not missing, f"types without examples: {sorted(missing)}; per type {report['per_type']}"
    # Each type on its own, on the same conversations: it applies to a fair share of them.
    for name in TYPE_NAMES:
        made = [make_example(c, name, random.Random(i)) for i, c in enumerate(sample[:120])]
        emitted = [m for m in made if isinstance(m, dict)]
        assert len(emitted) >= 0.3 * len(made), (name, [m for m in made if isinstance(m, str)])
        assert all(score_reply(record_of(m), m["messages"][-1]["content"])["prompt_level"] for m in emitted)
    # Binding limits: every example still passes, and every length limit cut its reply.
    out, report = mix_instructions(sample[:1000], share=1.0, seed=0, binding_limits=True)
    by_id = {c["id"] + ID_SUFFIX: c for c in sample[:1000]}
    limited = [c for c in out if any(k["type"] in ("max_words", "max_sentences") for k in c.get("instruction_checks", []))]
    assert len(limited) >= 0.04 * report["n_replaced"]
    for c in limited:
        assert score_reply(record_of(c), c["messages"][-1]["content"])["prompt_level"]
        limit = _limit_of(c)
        assert limit["n"] < _length(by_id[c["id"]]["messages"][-1]["content"], limit["type"])
