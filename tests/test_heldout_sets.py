"""The question set and the out-of-distribution prompts stay out of training: no shared openings, no reuse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sftlab.data.filters import normalized_prompt
from sftlab.data.instructions import MORE_PHRASINGS, PHRASINGS
from sftlab.ifeval import load_prompts
from sftlab.ood import load_ood_prompts
from sftlab.qa import FEWSHOT_EXAMPLES, load_questions

OPENING_WORDS = 8
ROOT = Path(__file__).resolve().parents[1]


def opening(text: str) -> str:
    """A request's opening as compared here: its first `OPENING_WORDS` normalised words."""
    return " ".join(normalized_prompt(text).split()[:OPENING_WORDS])


def held_out_texts() -> list[str]:
    return [q["question"] for q in load_questions()] + [p["prompt"] for p in load_ood_prompts()]


def _grams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = normalized_prompt(re.sub(r"\{\w+\}", " ", text)).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_the_new_sets_share_no_opening_with_the_ifeval_prompts_or_each_other():
    texts = held_out_texts()
    ifeval = {opening(p["prompt"]) for p in load_prompts()}
    openings = [opening(t) for t in texts]
    assert not [t for t, o in zip(texts, openings) if o in ifeval]
    ood = [opening(p["prompt"]) for p in load_ood_prompts()]
    assert len(set(ood)) == len(ood)


def test_no_training_phrasing_shares_six_words_with_a_new_prompt():
    templates = [t for table in (PHRASINGS, MORE_PHRASINGS) for ts in table.values() for t in ts]
    assert len(templates) > 50
    held = set().union(*(_grams(t) for t in held_out_texts()))
    assert not [t for t in templates if _grams(t) & held]


def test_no_training_code_reads_the_new_sets():
    """The training mix is built by sftlab.data; none of its modules opens the evaluation-only files."""
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "sftlab" / "data").glob("*.py"))
    sources += (ROOT / "src" / "sftlab" / "train.py").read_text()
    for name in ("qa.jsonl", "ifeval_ood.jsonl", "sftlab.qa", "sftlab.ood", "from ..qa", "from ..ood"):
        assert name not in sources


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["configs/default.yaml"])
def test_no_new_prompt_opens_or_appears_in_a_training_conversation(recipe):
    from sftlab.config import load_config, section
    from sftlab.data import prepare_data
    from sftlab.sources import load_tokenizer

    config = load_config(ROOT / recipe)
    tokenizer = load_tokenizer(section(config, "model")["base"])
    prepared = prepare_data(section(config, "data"), tokenizer, int(config.get("seed", 0)), progress=False)
    users = [m["content"] for c in prepared.train for m in c["messages"] if m["role"] == "user"]
    assert len(users) > 500
    trained_openings = {opening(u) for u in users}
    texts = held_out_texts() + [q for q, _ in FEWSHOT_EXAMPLES]
    assert not [t for t in texts if opening(t) in trained_openings]
    joined = "\n".join(normalized_prompt(u) for u in users)
    assert not [t for t in texts if normalized_prompt(t) in joined]
