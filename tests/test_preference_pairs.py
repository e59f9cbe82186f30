"""The preference stage's prompts and pairs: rules for chosen and rejected, repairs, counted drops."""

from __future__ import annotations

import random
import re

import pytest

from sftlab.errors import ConfigError
from sftlab.ifeval import load_prompts, score_reply
from sftlab.preference.pairs import DROP_REASONS, build_pairs, check_record, judge, repair, select
from sftlab.preference.prompts import PROMPT_SUFFIX, build_prompt_pool, evaluation_texts

REPLY = ("Tea is best brewed with water just off the boil. Green tea prefers cooler water, around eighty "
         "degrees. Steep black tea for three to five minutes. Longer steeping makes it bitter. Add milk "
         "after steeping if you like it. Store the leaves in a dark and dry jar.")


def _conversations(n=40):
    topics = ["tea", "bread", "bicycles", "gardens", "rivers", "violins", "kites", "maps"]
    return [{"id": f"c{i}", "messages": [
        {"role": "user", "content": f"Tell me how to look after {topics[i % len(topics)]} properly, number {i}."},
        {"role": "assistant", "content": REPLY.replace("Tea", topics[i % len(topics)].capitalize())}]}
        for i in range(n)]


def _prompt(type_name, checks, request="How do I brew tea?", instruction="Follow the rule."):
    return {"id": "p+pref", "kind": "instruction", "type": type_name, "checks": checks, "request": request,
            "messages": [{"role": "user", "content": f"{request} {instruction}"}], "reference": REPLY}


def _plain(reference="A training reply."):
    return {"id": "q+pref", "kind": "plain", "type": None, "checks": None, "request": "How do I brew tea?",
            "messages": [{"role": "user", "content": "How do I brew tea?"}], "reference": reference}


def _select(prompt, texts, stopped=None, **kw):
    samples = [{"text": t, "stopped": True if stopped is None else stopped[i]} for i, t in enumerate(texts)]
    verdicts = [judge(prompt, s) for s in samples]
    return select(prompt, samples, verdicts, rng=random.Random(0), **kw)


LOOP = "tea tea tea tea tea tea tea tea tea tea tea tea tea tea tea tea"


def test_a_passing_and_a_failing_sample_make_one_pair():
    prompt = _prompt("lowercase", [{"type": "all_lowercase"}])
    good, bad = "steep it for three minutes and enjoy.", "Steep it for three minutes and enjoy."
    pair = _select(prompt, [bad, good])
    assert (pair["chosen"], pair["rejected"], pair["chosen_kind"], pair["dropped"]) == (good, bad, "sample", None)
    assert pair["rejected_stopped"] is True


def test_a_sample_that_passes_but_loops_is_rejected_not_chosen():
    prompt = _prompt("no_commas", [{"type": "no_commas"}])
    pair = _select(prompt, [LOOP, "Steep it for three minutes and enjoy."], stopped=[False, True])
    assert pair["chosen"].startswith("Steep") and pair["rejected"] == LOOP and pair["rejected_stopped"] is False


def test_no_passing_sample_and_no_rewrite_drops_the_prompt_with_its_reason():
    prompt = _prompt("keywords", [{"type": "required_words", "words": ["saucer"]}])
    pair = _select(prompt, ["Steep it for three minutes.", "Boil the water first, then steep it."])
    assert pair["chosen"] is None and pair["dropped"] == "not_repairable"
    _, _, report = build_pairs([prompt], {prompt["id"]: [{"text": "Steep it.", "stopped": True}]}, seed=0)
    assert report["dropped"] == {"not_repairable": 1} and report["pairs"]["n"] == 0
    assert set(report["dropped"]) <= set(DROP_REASONS)
    assert report["instruction"]["per_type"]["keywords"]["dropped"] == {"not_repairable": 1}


def test_the_best_usable_sample_is_repaired_against_itself_and_counted():
    prompt = _prompt("lowercase", [{"type": "all_lowercase"}])
    pair = _select(prompt, ["Steep It For Three Minutes.", LOOP], stopped=[True, False])
    assert pair["chosen_kind"] == "repaired" and pair["chosen"] == "steep it for three minutes."
    assert pair["rejected"] == "Steep It For Three Minutes."
    samples = {prompt["id"]: [{"text": "Steep It For Three Minutes.", "stopped": True}]}
    _, _, report = build_pairs([prompt], samples, seed=0)
    assert report["pairs"]["repaired"] == 1 and report["pairs"]["by_chosen_kind"] == {"repaired": 1}
    assert report["examples"][0]["chosen_kind"] == "repaired"
    assert _select(prompt, ["Steep It."], allow_repair=False)["dropped"] == "no_passing_sample"


def test_a_repair_uses_the_prompt_s_own_numbers_and_bullet():
    prompt = _prompt("bullets", [{"type": "bullet_count", "n": 3}], instruction='Use 3 bullets; start each with "* ".')
    fixed, why = repair(prompt, REPLY)
    assert why is None and len(re.findall(r"^\* ", fixed, re.M)) == 3 and "- " not in fixed
    ending = _prompt("ends_with", [{"type": "ends_with", "phrase": "Good luck with it!"}])
    fixed, _ = repair(ending, REPLY)
    assert fixed.endswith("Good luck with it!") and score_reply(check_record(ending), fixed)["prompt_level"]
    limit = _prompt("max_words+no_commas", [{"type": "max_words", "n": 30}, {"type": "no_commas"}])
    fixed, _ = repair(limit, REPLY + " Milk, sugar, honey.")
    assert score_reply(check_record(limit), fixed)["prompt_level"] and len(fixed.split()) <= 30
    assert repair(_prompt("min_words", [{"type": "min_words", "n": 300}]), REPLY) == (None, "not_repairable")


def test_prompts_without_a_pair_are_counted_by_reason():
    prompt = _prompt("lowercase", [{"type": "all_lowercase"}])
    assert _select(prompt, ["fine.", "also fine."])["dropped"] == "all_samples_pass"
    assert _select(prompt, ["fine."])["chosen"] == "fine."  # rejection sampling still trains on it
    assert _select(prompt, [LOOP, ""], stopped=[False, True])["dropped"] == "no_usable_sample"
    assert _select(prompt, [])["dropped"] == "no_samples"


def test_plain_prompts_prefer_a_usable_sample_to_an_unusable_one():
    plain = _plain()
    pair = _select(plain, [LOOP, "Boil the water and steep it for three minutes."], stopped=[False, True])
    assert pair["chosen_kind"] == "sample" and pair["rejected"] == LOOP and not pair["rejected_stopped"]
    deflect = "I'm sorry, I'm not sure what you mean by tea. Could you clarify?"
    pair = _select(plain, [deflect])
    assert (pair["chosen"], pair["chosen_kind"], pair["rejected"]) == ("A training reply.", "reference", deflect)
    assert _select(plain, ["Boil the water and steep it."])["dropped"] == "all_samples_usable"


def test_the_report_holds_sample_pass_rates_before_training():
    prompt = _prompt("lowercase", [{"type": "all_lowercase"}])
    samples = {prompt["id"]: [{"text": t, "stopped": True} for t in ("yes it is.", "Yes It Is.", "no.", "No.")],
               "q+pref": [{"text": LOOP, "stopped": False}, {"text": "Boil water.", "stopped": True}]}
    selections, verdicts, report = build_pairs([prompt, _plain()], samples, seed=0)
    assert report["instruction"]["pass_rate"] == 0.5 and report["instruction"]["per_check"]["all_lowercase"]["rate"] == 0.5
    assert report["samples"]["n"] == 6 and report["prompts"] == {"instruction": 1, "plain": 1}
    assert report["pairs"]["n"] == 2 and report["rft"]["n"] == 2 and report["pairs"]["rejected_not_stopped"] >= 0
    assert [len(v) for v in verdicts] == [4, 2] and [s["id"] for s in selections] == ["p+pref", "q+pref"]
    assert build_pairs([prompt, _plain()], samples, seed=0)[2] == report  # deterministic


def test_the_prompt_pool_is_made_from_training_conversations_like_the_instruction_examples():
    convs = _conversations()
    prompts, report = build_prompt_pool(convs, n_instruction=12, n_plain=5, seed=1)
    inst = [p for p in prompts if p["kind"] == "instruction"]
    assert len(inst) == 12 and report["made"] == {"instruction": 12, "plain": 5}
    assert all(p["id"].endswith(PROMPT_SUFFIX) for p in prompts)
    assert len({p["id"] for p in prompts}) == len(prompts)  # plain prompts come from other conversations
    for p in inst:
        assert p["messages"][-1]["role"] == "user" and p["request"] in p["messages"][-1]["content"]
        assert 1 <= len(p["checks"]) <= 2
        assert score_reply(check_record(p), p["reference"])["prompt_level"]  # the rewritten training reply passes
    assert max(report["per_type"].values()) - min(report["per_type"].values()) <= 1  # balanced types
    assert build_prompt_pool(convs, n_instruction=12, n_plain=5, seed=1)[0] == prompts


def test_no_evaluation_prompt_can_enter_the_pool():
    ifeval = load_prompts()
    convs = _conversations(10)
    convs[3]["messages"][0]["content"] = ifeval[0]["prompt"]  # an evaluation prompt slipped in
    convs[5]["messages"][0]["content"] = "Please help. " + ifeval[1]["prompt"]
    exclude = evaluation_texts(if_records=ifeval)
    prompts, report = build_prompt_pool(convs, n_instruction=5, n_plain=10, seed=0, exclude=exclude)
    assert report["excluded"] == {"matches_evaluation_prompt": 2}
    texts = {r["prompt"] for r in ifeval}
    assert not any(p["request"] in texts or p["messages"][0]["content"] in texts for p in prompts)
    assert {p["id"] for p in prompts}.isdisjoint({"c3+pref", "c5+pref"})


def test_bad_pool_sizes_and_types_are_named():
    with pytest.raises(ConfigError, match="preference.prompts"):
        build_prompt_pool(_conversations(2), n_instruction=-1, n_plain=0, seed=0)
    with pytest.raises(ConfigError, match="preference.types"):
        build_prompt_pool(_conversations(2), n_instruction=1, n_plain=0, seed=0, types=["shouting"])
