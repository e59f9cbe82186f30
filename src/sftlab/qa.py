"""Questions with checkable answers: is the reply right, and did it try?

`prompts/qa.jsonl` holds short questions of the kinds a chat model is asked (`KINDS`: facts,
arithmetic, unit conversions, definitions, simple reasoning, "which of these"), each with its
accepted answers, optional distractors (the wrong options a choice question names) and the
source of its answer (`provenance`). They were written for this project (no PyPI package ships
such a set) and are held out from every training mix (tests). `match` decides a reply by rule:

- a number (an answer written as a JSON number) matches the first or the last number the reply
  writes that is not already in the question ("7 times 8 is 56" -> 56), within the item's
  `tolerance` (default: exact); digits with thousands separators ("1,024") and number words
  ("twelve", "one hundred and twenty") count;
- a text answer matches when one of its aliases appears as whole words, ignoring case, accents,
  punctuation and the articles a/an/the ("The Pacific Ocean." matches "Pacific");
- with distractors, the first option the reply names must be an accepted one, and a reply that
  lists options as alternatives ("Sydney or Canberra", "the Earth or the Moon") chose nothing;
- only the reply's own text counts: what it copied from the question (`sftlab.echo`) is removed.

`attempted` says whether a reply tries to answer at all (rather than saying nothing, copying
the question, looping, deflecting, greeting, saying it does not know, or asking back): the share
of attempts separates "wrong" from "did not try". Replies are short, so generation stops at
`QA_MAX_NEW_TOKENS` (64) new tokens.

The base model also answers as plain text after a few solved examples (`fewshot_prompt`, the
"base_fewshot" system; `fewshot_answer` keeps the text before the next question): what the
270M base model knows without any chat format, to tell knowledge it never had from knowledge
the chat format or SFT loses.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from .categories import category, category_counts
from .echo import strip_echo
from .errors import DataError
from .stats import rate

QA_PATH = Path(__file__).resolve().parent / "prompts" / "qa.jsonl"
KINDS = ("fact", "arithmetic", "unit", "definition", "reasoning", "choice")
QA_MAX_NEW_TOKENS = 64
_FIELDS = {"id", "kind", "question", "answers", "distractors", "tolerance", "provenance"}

# Solved examples for the base model's plain-text prompt; none is a test question (test).
FEWSHOT_EXAMPLES = (
    ("What is the capital of Italy?", "Rome"),
    ("What is 9 plus 6?", "15"),
    ("How many minutes are in 2 hours?", "120"),
    ("What is a baby cat called?", "A kitten"),
    ("Which is heavier, a brick or a feather?", "A brick"),
)
FEWSHOT_HEADER = "Answer each question with a short answer.\n\n"
_FEWSHOT_END = re.compile(r"\n[ \t]*\n|\n[ \t]*Q:")

_ONES = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUM_WORD = "|".join(sorted([*_ONES, *_TENS, *_SCALES], key=len, reverse=True))
_NUMBER = re.compile(
    r"(?P<digits>(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|(?<![\w.,])\d+(?:\.\d+)?)"
    rf"|(?P<words>\b(?:{_NUM_WORD})(?:(?:[ \t-]+|[ \t]+and[ \t]+)(?:{_NUM_WORD}))*\b)",
    re.IGNORECASE)
_ARTICLES = frozenset({"a", "an", "the"})
_LIST_GLUE = frozenset({"or", "and", "vs", "versus", "nor", "either", "maybe", "perhaps"})
_DONT_KNOW = re.compile(
    r"\bI (?:do not|don't|dont) know\b|\bI(?:'m| am) not (?:sure|certain)\b|\bI (?:cannot|can't|can not) "
    r"(?:answer|say|tell)\b|\bas an AI\b|\bno (?:one|way to) know", re.IGNORECASE)
_FIRST_SENTENCE = re.compile(r"^\s*([^.!?\n]*[.!?]?)")
NOT_ATTEMPTED = ("empty", "echo", "loop", "deflection", "greeting")


# --------------------------------------------------------------------------- text and numbers


def normalise(text: str) -> list[str]:
    """Words as the matcher compares them: no accents, lowercase, punctuation and articles dropped,
    decimal points kept: "The Brasília, 0.7!" -> ["brasilia", "0.7"]."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"(?<=\d)[.,](?=\d)", lambda m: "." if m.group() == "." else "", text)  # 1,024 -> 1024
    text = re.sub(r"[^a-z0-9.]+|\.(?!\d)|(?<!\d)\.", " ", text)
    return [w for w in text.split() if w not in _ARTICLES]


def _words_value(run: str) -> float | None:
    """"one hundred and twenty" -> 120; "twenty-one" -> 21; a lone "one" (often a pronoun) -> None."""
    words = [w for w in re.split(r"[\s-]+", run.lower()) if w and w != "and"]
    if words == ["one"]:
        return None
    total, current = 0, 0
    for w in words:
        if w in _ONES:
            current += _ONES[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = (current or 1) * 100
        else:
            total += (current or 1) * _SCALES[w]
            current = 0
    return float(total + current)


def numbers_in(text: str) -> list[float]:
    """Every number written in the text, in order, digits and words:
    "It is 1,024 (one thousand and twenty-four)." -> [1024.0, 1024.0]."""
    out = []
    for m in _NUMBER.finditer(text):
        if m.group("digits"):
            out.append(float(m.group("digits").replace(",", "")))
        else:
            value = _words_value(m.group("words"))
            if value is not None:
                out.append(value)
    return out


def _is_number(answer) -> bool:
    return isinstance(answer, (int, float)) and not isinstance(answer, bool)


# --------------------------------------------------------------------------- the question file


def validate_item(item: Mapping) -> None:
    """Raise DataError, naming the item's id, if a question record is malformed: the fields, a known
    `kind`, a non-empty list of accepted answers (numbers or non-empty strings), distractors that
    are not accepted answers, and no accepted answer already written in the question (copying it
    would score), unless the question names its options (then distractors name the wrong ones)."""
    if not isinstance(item, Mapping):
        raise DataError(f"a question record must be a JSON object, got {item!r}")
    qid = item.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise DataError(f"question record without a string id: {item!r}")
    where = f"question {qid!r}"
    unknown = set(item) - _FIELDS
    if unknown:
        raise DataError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
    if item.get("kind") not in KINDS:
        raise DataError(f"{where}: kind must be one of {', '.join(KINDS)}, got {item.get('kind')!r}")
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(item.get("provenance"), str) or not item["provenance"].strip():
        raise DataError(f"{where}: 'provenance' (where the answer comes from) must be a non-empty string")
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{where}: 'answers' must be a non-empty list of accepted answers, got {answers!r}")
    for a in answers:
        if not (_is_number(a) or (isinstance(a, str) and normalise(a))):
            raise DataError(f"{where}: accepted answer {a!r} is neither a number nor a non-empty string")
    tolerance = item.get("tolerance", 0)
    if not _is_number(tolerance) or tolerance < 0:
        raise DataError(f"{where}: 'tolerance' must be a number >= 0, got {tolerance!r}")
    distractors = item.get("distractors", [])
    if not isinstance(distractors, list) or not all(isinstance(d, str) and normalise(d) for d in distractors):
        raise DataError(f"{where}: 'distractors' must be a list of non-empty strings, got {distractors!r}")
    texts = [normalise(a) for a in answers if isinstance(a, str)]
    clash = [d for d in distractors if normalise(d) in texts]
    if clash:
        raise DataError(f"{where}: {clash} are both accepted answers and distractors")
    q_words, q_numbers = normalise(question), numbers_in(question)
    for a in answers:
        if _is_number(a) and any(abs(a - x) <= tolerance for x in q_numbers):
            raise DataError(f"{where}: the accepted answer {a!r} is a number the question already writes")
        if isinstance(a, str) and not distractors and _find(q_words, normalise(a)):
            raise DataError(f"{where}: the accepted answer {a!r} is already written in the question")


def load_questions(path: str | Path | None = None) -> list[dict]:
    """The question records of a JSONL file (default: the packaged `prompts/qa.jsonl`), validated;
    a bad line, a bad record or a repeated id raises DataError naming the line and the item."""
    path = Path(path) if path is not None else QA_PATH
    records, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err})") from err
            try:
                validate_item(record)
            except DataError as err:
                raise DataError(f"{path}:{lineno}: {err}") from err
            if record["id"] in seen:
                raise DataError(f"{path}:{lineno}: question id {record['id']!r} appears twice")
            seen.add(record["id"])
            records.append(record)
    if not records:
        raise DataError(f"{path}: no questions")
    return records


# --------------------------------------------------------------------------- matching


def _find(words: list[str], phrase: list[str]) -> list[int]:
    """Start positions of `phrase` (a word list) in `words`."""
    n = len(phrase)
    return [i for i in range(len(words) - n + 1) if n and words[i : i + n] == phrase]


def _numeric_match(item: Mapping, own: str) -> bool:
    tol = float(item.get("tolerance", 0)) + 1e-9
    asked = numbers_in(item["question"])
    candidates = [x for x in numbers_in(own) if not any(abs(x - q) <= 1e-9 for q in asked)]
    if not candidates:
        return False
    ends = {candidates[0], candidates[-1]}
    return any(abs(x - float(a)) <= tol for x in ends for a in item["answers"] if _is_number(a))


def _text_match(item: Mapping, own: str) -> bool:
    words = normalise(own)
    accepted = [normalise(a) for a in item["answers"] if isinstance(a, str)]
    options = [(True, 0, a) for a in accepted] + [(False, k + 1, normalise(d))
                                                   for k, d in enumerate(item.get("distractors", []))]
    mentions = sorted((pos, -len(phrase), ok, group, len(phrase))
                      for ok, group, phrase in options for pos in _find(words, phrase))
    if not any(ok for _, _, ok, _, _ in mentions):
        return False
    if not item.get("distractors"):
        return True
    if not mentions[0][2]:
        return False  # the first option the reply names is a wrong one
    for (p1, _, _, g1, n1), (p2, _, _, g2, _) in zip(mentions, mentions[1:]):
        if g1 != g2 and p2 >= p1 + n1 and set(words[p1 + n1 : p2]) <= _LIST_GLUE:
            return False  # "A or B": options listed as alternatives, no choice made
    return True


def match(item: Mapping, reply: str) -> bool:
    """Whether a reply gives an accepted answer to a question record (rules in the module docstring).

    >>> match({"question": "What is 7 times 8?", "answers": [56]}, "7 times 8 is 56.")
    True
    >>> match({"question": "Capital of Australia?", "answers": ["Canberra"], "distractors": ["Sydney"]},
    ...       "Sydney or Canberra.")
    False
    """
    own = strip_echo(reply, item["question"])
    if any(_is_number(a) for a in item["answers"]) and _numeric_match(item, own):
        return True
    return any(isinstance(a, str) for a in item["answers"]) and _text_match(item, own)


def attempted(reply: str, *, prompt: str) -> bool:
    """Whether a reply tries to answer, judged on its first paragraph (what it says before any
    repetition sets in: a base model often answers, then writes the question again): not empty,
    not mostly copied from the question, not a loop, deflection or bare greeting
    (`sftlab.categories`), no "I don't know" / "I'm not sure", and its own first sentence is not a
    question back to the user. (`qa_values` also counts every correct reply as an attempt.)

    >>> attempted("The capital of France is Paris.\n\nWhat is the capital of France?", prompt="What is the capital of France?")
    True
    >>> attempted("What do you mean by capital?", prompt="What is the capital of France?")
    False
    """
    first = next((p for p in re.split(r"\n[ \t]*\n", reply) if re.search(r"\w", p)), "")
    if category(first, stopped=True, prompt=prompt) in NOT_ATTEMPTED:
        return False
    own = strip_echo(first, prompt).strip()
    if not re.search(r"\w", own) or _DONT_KNOW.search(own):
        return False
    first = _FIRST_SENTENCE.match(own).group(1).strip()
    return not first.endswith("?")


# --------------------------------------------------------------------------- the base model's prompt


def fewshot_prompt(question: str) -> str:
    """The base model's plain-text prompt: a header, `FEWSHOT_EXAMPLES` as "Q: ...\\nA: ..." pairs, the question."""
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in FEWSHOT_EXAMPLES)
    return f"{FEWSHOT_HEADER}{shots}Q: {question}\nA:"


def fewshot_answer(generated: str) -> tuple[str, bool]:
    """The answer in a few-shot continuation: the text before the next blank line or "Q:" line, and
    whether such a boundary came (the model closed its answer): " Paris\\n\\nQ: ..." -> ("Paris", True)."""
    m = _FEWSHOT_END.search(generated)
    return (generated[: m.start()] if m else generated).strip(), m is not None


# --------------------------------------------------------------------------- scoring


def qa_values(items: Sequence[Mapping], replies: Sequence[Mapping]) -> dict:
    """Per-question 0/1 values aligned with `items` ("accuracy", "attempt_rate": a correct reply or
    one that `attempted`, "stop_rate") and the reply categories; `replies` are {"text", "stopped"} dicts."""
    if len(items) != len(replies):
        raise ValueError(f"{len(items)} questions but {len(replies)} replies")
    correct = [float(match(it, r["text"])) for it, r in zip(items, replies)]
    return {
        "accuracy": correct,
        "attempt_rate": [float(bool(ok) or attempted(r["text"], prompt=it["question"]))
                         for it, r, ok in zip(items, replies, correct)],
        "stop_rate": [float(bool(r["stopped"])) for r in replies],
        "category": [category(r["text"], stopped=bool(r["stopped"]), prompt=it["question"])
                     for it, r in zip(items, replies)],
    }


def qa_scores(items: Sequence[Mapping], replies: Sequence[Mapping], values: dict | None = None) -> dict:
    """One system's accuracy, attempt rate, stop rate (Wilson intervals), accuracy among the replies
    that attempted an answer, accuracy per kind, and the reply categories."""
    values = values or qa_values(items, replies)
    acc, tried = values["accuracy"], values["attempt_rate"]
    kinds = {k: rate([a for it, a in zip(items, acc) if it["kind"] == k]) for k in KINDS
             if any(it["kind"] == k for it in items)}
    answered = [a for a, t in zip(acc, tried) if t]
    return {"accuracy": rate(acc), "attempt_rate": rate(tried), "stop_rate": rate(values["stop_rate"]),
            "accuracy_when_attempted": rate(answered) if answered else {"value": None, "ci": None, "n": 0},
            "per_kind": kinds, "categories": category_counts(values["category"]), "n": len(items)}
