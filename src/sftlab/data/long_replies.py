"""More instruction examples from conversations too long to train on whole (`data.instructions.extra`).

The length filter (`data.max_tokens`) keeps short conversations, so that a 2-core CPU trains on
many replies; on ShareGPT it rejects about half of the conversations that pass every other filter
(data_report.json, `too_many_tokens`). Their requests are no worse than the kept ones', only their
replies are longer. `long_reply_examples` turns such a conversation into one more
verifiable-instruction example (the method of `sftlab.data.instructions`): its first exchange, the
reply cut at a sentence end, one other instruction type applied to the cut reply, and the request
carrying both instructions, the partner's and a word or sentence limit that says why the reply is
short. An example is kept only if it fits `max_tokens` as the filter measures it and the reply
passes every check (`sftlab.ifeval.score_reply`, echo-proof); otherwise the reason is counted.

These examples are added to the training set, one conversation each, where `share` replaces
conversations: they buy more practice per instruction type with training time. No held-out
request is reused: a conversation whose normalised opening request is that of a kept conversation
(training or held-out) or of an earlier pool conversation is skipped as `duplicate_prompt`.
"""

from __future__ import annotations

import random
from collections import Counter

from sftlab.errors import ConfigError, DataError
from sftlab.ifeval import count_sentences, score_reply, validate_record
from sftlab.metrics import count_words

from .filters import conversation_text, first_prompt, normalized_prompt, token_lengths
from .instructions import (
    _FENCE,
    _TABLE_LINE,
    INSTRUCTION_TYPES,
    LIMIT_TYPES,
    SIZES,
    _cut_to,
    make_example,
    render_instruction,
    sentence_spans,
    sentences_within_words,
)
from .messages import validate_messages

EXTRA_SUFFIX = "+cut"  # id: the conversation's id, then instructions.ID_SUFFIX, then this
# The types that go with the limit: every single type but the limits themselves and min_words
# ("at least N words" beside "at most M words" would need the two sizes drawn together).
PARTNER_TYPES: tuple[str, ...] = tuple(n for n in INSTRUCTION_TYPES if n not in LIMIT_TYPES and n != "min_words")
LIMIT_KINDS: tuple[str, ...] = tuple(sorted(LIMIT_TYPES))
_MEASURE = {"max_words": count_words, "max_sentences": count_sentences}
# Reasons a smaller size may mend: too long for max_tokens, or over every limit once the partner added to it
_TRY_SMALLER = frozenset({"does_not_fit", "over_every_limit"})
# Reasons that come from the reply itself, the same whichever partner is tried.
_REPLY_REASONS = frozenset({"has_code_fence", "has_table", "invalid_conversation", "no_sentence_to_keep"})


def cut_reply(text: str, kind: str, size: int) -> str | None:
    """`text` up to a sentence end, within `size` words ("max_words") or sentences
    ("max_sentences"); None when not even the first sentence is.

    >>> cut_reply("One two three. Four five six. Seven.", "max_words", 6)
    'One two three. Four five six.'
    >>> cut_reply("It has two steps. Here they are:\\n\\n1. Mix. 2. Bake.", "max_sentences", 3)
    'It has two steps.'
    """
    spans = sentence_spans(text)
    keep = min(size, len(spans)) if kind == "max_sentences" else sentences_within_words(text, spans, size)
    return _cut_to(text, spans, keep)


def cut_example(conversation: dict, partner: str, kind: str, size: int, rng: random.Random, *,
                max_tokens: int, tokenizer, more_phrasings: bool = False) -> dict | str:
    """One example from `conversation`'s first exchange, or the reason there is none.

    The reply is cut to `size` (`cut_reply`), `partner` applied to it (`make_example`), and the
    limit stated as the smallest of SIZES[kind] that the final reply meets (a partner such as a
    title or a postscript may add a few words). Reasons: "has_code_fence", "has_table",
    "no_sentence_to_keep", the partner's own, "over_every_limit", "fails_check", "does_not_fit"
    (longer than `max_tokens` by `filters.token_lengths` of `filters.conversation_text`).
    """
    messages = conversation.get("messages") if isinstance(conversation, dict) else None
    if validate_messages(messages) is not None:
        return "invalid_conversation"
    request, reply = messages[0], messages[1]["content"]
    if _FENCE in reply:  # a cut would leave half a program
        return "has_code_fence"
    if _TABLE_LINE.search(reply):
        return "has_table"
    cut = cut_reply(reply, kind, size)
    if not cut or count_words(cut) < 3:
        return "no_sentence_to_keep"
    example = make_example({"id": conversation.get("id", ""), "messages": [request, {"role": "assistant",
                                                                                      "content": cut}]},
                           partner, rng, more_phrasings=more_phrasings)
    if isinstance(example, str):
        return example
    text = example["messages"][-1]["content"]
    n = next((s for s in SIZES[kind] if s >= _MEASURE[kind](text)), None)
    if n is None:
        return "over_every_limit"
    limit = INSTRUCTION_TYPES[kind]
    sentence = render_instruction(rng.choice(limit.wordings(more_phrasings)), {"n": n}, spell=rng.random() < 0.5)
    prompt = f"{example['messages'][0]['content']} {sentence}"
    checks = [*example["instruction_checks"], {"type": limit.check, **limit.check_args({"n": n})}]
    record = {"id": example["id"] + EXTRA_SUFFIX, "prompt": prompt, "checks": checks}
    try:
        validate_record(record)
    except DataError:
        return "contradictory_checks"
    if not score_reply(record, text)["prompt_level"]:
        return "fails_check"
    new_messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    if token_lengths([conversation_text(new_messages)], tokenizer)[0] > max_tokens:
        return "does_not_fit"
    return {"id": record["id"], "messages": new_messages, "instruction_type": f"{kind}+{partner}",
            "instruction_checks": checks}


def long_reply_examples(
    pool: list[dict], *, n: int, seed: int, max_tokens: int, tokenizer,
    exclude_prompts: set[str] | frozenset[str] = frozenset(), types: list[str] | None = None,
    more_phrasings: bool = False,
) -> tuple[list[dict], dict]:
    """Up to `n` examples (`cut_example`) from `pool`, drawn in a `random.Random(seed)` order.

    Each conversation gets a limit kind and a starting size at random, and tries the partner
    types (`PARTNER_TYPES`, those named in `types` when given) with the fewest examples first
    (so the partners stay balanced; `per_type` counts "kind+partner");
    a partner whose example does not fit (or is over every limit) tries the next smaller size. Every failed attempt is
    counted by reason, and a conversation nothing applies to as "no_type_applies". Returns the
    examples and a report {"n_asked", "n_pool", "n_added", "per_type", "skipped", "examples"}.
    Deterministic for a seed and input. `more_phrasings` as in `instructions.make_example`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"data.instructions.extra must be a whole number >= 0, got {n!r}")
    partners = [t for t in PARTNER_TYPES if types is None or t in types]
    if n and not partners:
        raise ConfigError(f"data.instructions.extra needs one of {', '.join(PARTNER_TYPES)} among the types")
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    seen = set(exclude_prompts)
    out: list[dict] = []
    per_type, per_partner, skipped, examples = Counter(), Counter(), Counter(), {}
    for idx in order:
        if len(out) >= n:
            break
        conv = pool[idx]
        opening = normalized_prompt(first_prompt(conv.get("messages") or []))
        if opening in seen:
            skipped["duplicate_prompt"] += 1
            continue
        seen.add(opening)
        kind = rng.choice(LIMIT_KINDS)
        sizes = SIZES[kind][: rng.randrange(len(SIZES[kind])) + 1][::-1]  # a random size, then smaller ones
        tiebreak = {name: rng.random() for name in partners}
        made = None
        for partner in sorted(partners, key=lambda t: (per_partner[t], tiebreak[t])):
            for size in sizes:
                made = cut_example(conv, partner, kind, size, rng, max_tokens=max_tokens, tokenizer=tokenizer,
                                   more_phrasings=more_phrasings)
                if isinstance(made, dict):
                    break
                skipped[made] += 1
                if made not in _TRY_SMALLER:
                    break
            if isinstance(made, dict) or made in _REPLY_REASONS:
                break
        if isinstance(made, dict):
            out.append(made)
            per_partner[partner] += 1
            per_type[made["instruction_type"]] += 1
            examples.setdefault(made["instruction_type"], made["id"])
        else:
            skipped["no_type_applies"] += 1
    report = {"n_asked": n, "n_pool": len(pool), "n_added": len(out), "per_type": dict(sorted(per_type.items())),
              "skipped": dict(skipped.most_common()), "examples": dict(sorted(examples.items()))}
    return out, report
