"""Why a reply failed an instruction, by rule: the failure analysis of chapter 6.

`instruction_failure(check, reply, stopped)` names what a reply did instead of following one
checkable instruction, with rules a reader can verify by eye:

- letter case: for `all_lowercase`, "ordinary case" when the reply's first letter is a capital
  (it writes sentences as usual), else "a few capitals"; for `all_uppercase`, "ordinary case"
  when fewer than half its letters are capitals, else "mostly capitals";
- a bullet count (`bullet_count`): "numbered list instead" when the reply has numbered lines and
  no bullet lines (`numbered_right_count` records whether it has the asked number of them),
  "wrong number of bullets", or "no list";
- a paragraph count (`n_paragraphs`): "numbered list instead", or "wrong number of paragraphs";
- a required ending (`ends_with`): "phrase elsewhere" when the phrase is in the reply but not at
  its end, "phrase missing" otherwise;
- any check: "loop" when the reply repeats itself (`sftlab.categories`), else "cut at the token
  limit" when it did not stop: checked first, since then the instruction never had a chance;
- anything else: "other".

`wrapped_in_quotes(reply)` flags a reply wrapped whole in double quotes, a habit the training
mix can teach (its `quotation` examples wrap the reply), and `numbered_lines` counts list lines.

Two failures of any reply, not of an instruction:

- `speaks_as_user(request, reply)`: the reply takes the user's place, writing a first-person
  phrase of the request as its own ("...would the game publisher be able to sue me?" answered
  with "Sure, the game publisher would be able to sue me"): SPEAKS_AS_USER_WORDS consecutive words
  of the request, one of them "I", "me", "my" or "I'm", appear in the reply's first
  SPEAKS_AS_USER_SPAN words;
- `offers_instead_of_answering(reply)`: a short reply (at most OFFER_MAX_WORDS words) that offers
  help and asks for what the request already gave ("Sure, I'd be happy to help you with that.
  Could you please provide me with the information...").
"""

from __future__ import annotations

import re
from collections import Counter

_NUMBERED = re.compile(r"(?m)^\s*\d+[.)]\s+\S")
_BULLET = re.compile(r"(?m)^\s*[-*\u2022]\s+\S")
_BLANK = re.compile(r"\n\s*\n")

# The evaluation's check types and the training mix's instruction types that teach them.
TRAINED_AS = {"all_lowercase": "lowercase", "all_uppercase": "uppercase", "bullet_count": "bullets",
              "ends_with": "ends_with", "n_paragraphs": "paragraphs", "json_object": "json",
              "quotation": "quotation", "max_words": "max_words", "min_words": "min_words",
              "max_sentences": "max_sentences", "no_commas": "no_commas", "starts_with": "starts_with",
              "numbered_list": "numbered", "contains_title": "title", "required_words": "keywords",
              "forbidden_words": "avoid_words", "postscript": "postscript"}


def numbered_lines(text: str) -> int:
    """Lines that start a numbered list item ("1. ", "2) ")."""
    return len(_NUMBERED.findall(text))


def bullet_lines(text: str) -> int:
    """Lines that start a bullet item ("- ", "* ", "• ")."""
    return len(_BULLET.findall(text))


def wrapped_in_quotes(text: str) -> bool:
    """Whether the whole reply is one double-quoted string ("..." or “...”)."""
    t = text.strip()
    return len(t) >= 2 and t[0] in "\"\u201c" and t[-1] in "\"\u201d"


SPEAKS_AS_USER_WORDS = 4
SPEAKS_AS_USER_SPAN = 40
OFFER_MAX_WORDS = 40
_WORD = re.compile(r"[a-z0-9']+")
_FIRST_PERSON = {"i", "me", "my", "i'm", "im", "i've", "i'd", "mine", "myself"}
_OFFER = re.compile(r"\b(?:happy|glad) to help\b|\bI can help\b", re.IGNORECASE)
_ASK_FOR = re.compile(r"\b(?:could|can|would) you (?:please )?(?:provide|give|share|tell|send)\b"
                      r"|\b(?:just )?(?:give|send|tell) me\b|\blet me know (?:what|which|more)\b"
                      r"|\bplease (?:provide|share)\b", re.IGNORECASE)


def _lower_words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def speaks_as_user(request: str, reply: str) -> bool:
    """Whether the reply writes a first-person phrase of the request as its own (module docstring).

    >>> speaks_as_user("Would the game publisher be able to sue me?", "Sure, the publisher would be able to sue me.")
    True
    >>> speaks_as_user("Would the game publisher be able to sue me?", "Yes, they could sue you for it.")
    False
    """
    asked, said = _lower_words(request), _lower_words(reply)[:SPEAKS_AS_USER_SPAN]
    n = SPEAKS_AS_USER_WORDS
    phrases = {tuple(asked[i:i + n]) for i in range(len(asked) - n + 1) if _FIRST_PERSON & set(asked[i:i + n])}
    return any(tuple(said[i:i + n]) in phrases for i in range(len(said) - n + 1))


def offers_instead_of_answering(reply: str) -> bool:
    """Whether a short reply offers help and asks for details instead of answering (module docstring).

    >>> offers_instead_of_answering("Sure, I'd be happy to help. Could you please provide me with the details?")
    True
    >>> offers_instead_of_answering("Sure, I'd be happy to help. Paris is the capital of France.")
    False
    """
    return len(_lower_words(reply)) <= OFFER_MAX_WORDS and bool(_OFFER.search(reply)) and bool(_ASK_FOR.search(reply))


def reply_failure_counts(samples: list[dict], system: str) -> dict:
    """How many of `system`'s replies in `samples` speak as the user and how many offer help instead
    of answering, out of how many: {"speaks": n, "offers": n, "replies": n}. The request is the
    user text the reply answers (`rescore.prompt_text`, as the echo rule reads it)."""
    from .rescore import prompt_text

    rows = [r for r in samples if system in r["replies"]]
    return {"speaks": sum(speaks_as_user(prompt_text(r["prompt"]), r["replies"][system]["text"]) for r in rows),
            "offers": sum(offers_instead_of_answering(r["replies"][system]["text"]) for r in rows),
            "replies": len(rows)}


def _case_share(text: str, upper: bool) -> float:
    letters = [c for c in text if c.isalpha() and c.lower() != c.upper()]
    if not letters:
        return 1.0
    return sum(c.isupper() if upper else c.islower() for c in letters) / len(letters)


def instruction_failure(check: dict, reply: str, stopped: bool) -> str:
    """What the reply did instead of following `check` (module docstring); call it on failed checks."""
    from .categories import category

    kind = check["type"]
    if category(reply, stopped=stopped, prompt="") == "loop":
        return "loop"
    if not stopped:
        return "cut at the token limit"
    if kind == "all_lowercase":
        first = next((c for c in reply if c.isalpha()), "")
        return "ordinary case" if first.isupper() else "a few capitals"
    if kind == "all_uppercase":
        return "ordinary case" if _case_share(reply, True) < 0.5 else "mostly capitals"
    if kind == "bullet_count":
        numbered, bullets = numbered_lines(reply), bullet_lines(reply)
        if numbered and not bullets:
            return "numbered list instead"
        return "wrong number of bullets" if bullets else "no list"
    if kind == "n_paragraphs":
        if numbered_lines(reply) >= 2:
            return "numbered list instead"
        return "wrong number of paragraphs"
    if kind == "ends_with":
        phrase = check.get("phrase", "").strip().lower()
        return "phrase elsewhere" if phrase and phrase in reply.lower() else "phrase missing"
    return "other"


def failure_table(samples: list[dict], system: str = "sft", types=None) -> dict:
    """For each check type (or those in `types`): {"checks": n, "passed": n, "kinds": Counter of
    `instruction_failure` over the failed ones, "numbered_right_count": n} from IFEval-style samples
    (each with `checks` and the system's reply with `checks_passed`)."""
    out: dict[str, dict] = {}
    for row in samples:
        reply = row["replies"].get(system)
        if reply is None or reply.get("checks_passed") is None:
            continue
        for check, ok in zip(row["checks"], reply["checks_passed"]):
            if types is not None and check["type"] not in types:
                continue
            entry = out.setdefault(check["type"], {"checks": 0, "passed": 0, "kinds": Counter(), "numbered_right_count": 0})
            entry["checks"] += 1
            if ok:
                entry["passed"] += 1
                continue
            why = instruction_failure(check, reply["text"], bool(reply["stopped"]))
            entry["kinds"][why] += 1
            if why == "numbered list instead" and numbered_lines(reply["text"]) == check.get("n"):
                entry["numbered_right_count"] += 1
    return out


def trained_examples(per_type: dict, check_type: str) -> int:
    """How many training examples carried the instruction that teaches `check_type`, pairs included
    (`per_type` is the data report's instructions.per_type: {"bullets": 13, "bullets+lowercase": 13, ...})."""
    name = TRAINED_AS.get(check_type)
    return sum(n for kind, n in per_type.items() if name in kind.split("+")) if name else 0
