"""The prompts of the preference stage, from training-side conversations only.

Instruction prompts are made exactly as the verifiable-instruction training examples are
(`sftlab.data.instructions.make_example`: an instruction sentence from the training phrasings
appended to the last user turn, one or two instructions, every check validated), the types
drawn balanced as `mix_instructions` draws them; the rewritten training reply is kept only as
the prompt's `reference`. Plain prompts are other training conversations up to their last
user turn, so that general replies are not forgotten. A conversation whose user text is an
evaluation prompt (held-out, IFEval-style or multi-turn) is never used; the split keeps them
apart already, and this guard counts any that slips through as "matches_evaluation_prompt".
"""

from __future__ import annotations

import random
from collections import Counter

from sftlab.data.instructions import TYPE_NAMES, make_example
from sftlab.data.messages import validate_messages
from sftlab.errors import ConfigError

PROMPT_SUFFIX = "+pref"  # a prompt keeps its conversation's id with this suffix
KINDS = ("instruction", "plain")


def normal_text(text: str) -> str:
    """Lowercase, whitespace collapsed: how two prompt texts are compared."""
    return " ".join(str(text).lower().split())


def evaluation_texts(heldout_prompts=(), if_records=(), mt_records=()) -> set[str]:
    """The normalized user texts of every evaluation prompt a run scores: no preference prompt may be one."""
    texts = {normal_text(r["prompt"]) for r in if_records}
    for messages in [*heldout_prompts, *(r["messages"] for r in mt_records)]:
        texts |= {normal_text(m["content"]) for m in messages if m.get("role") == "user"}
    return {t for t in texts if t}


def _is_evaluation_prompt(messages: list[dict], exclude: set[str]) -> bool:
    """A user turn that is an evaluation prompt, or contains one whole."""
    for m in messages:
        if m.get("role") != "user":
            continue
        own = normal_text(m["content"])
        if own in exclude or any(len(e) >= 40 and e in own for e in exclude):
            return True
    return False


def _instruction_prompt(example: dict, conversation: dict) -> dict:
    """A prompt record from `make_example`'s result: the prompt, its checks, and what a repair needs."""
    messages = example["messages"]
    request = conversation["messages"][-2]["content"]
    return {"id": conversation["id"] + PROMPT_SUFFIX, "kind": "instruction", "type": example["instruction_type"],
            "messages": messages[:-1], "checks": example["instruction_checks"], "request": request,
            "reference": messages[-1]["content"]}


def _plain_prompt(conversation: dict) -> dict:
    messages = conversation["messages"]
    return {"id": conversation["id"] + PROMPT_SUFFIX, "kind": "plain", "type": None, "messages": messages[:-1],
            "checks": None, "request": messages[-2]["content"], "reference": messages[-1]["content"]}


def build_prompt_pool(conversations: list[dict], *, n_instruction: int, n_plain: int, seed: int,
                      types: list[str] | None = None, exclude: set[str] = frozenset()) -> tuple[list[dict], dict]:
    """`n_instruction` instruction prompts and `n_plain` plain ones from `conversations` (training-side).

    Conversations are taken in a `random.Random(seed)` order; each tries the instruction types
    with the fewest prompts so far first (ties in seeded order) until one applies, as
    `mix_instructions` does; one that no type applies to may still serve as a plain prompt.
    Plain prompts come from the conversations the instruction prompts did not use. Returns
    (prompts, report): {"n_conversations", "asked": {kind: n}, "made": {kind: n}, "per_type",
    "skipped": {reason: failed attempts}, "excluded": {reason: conversations}}.
    Deterministic for a seed and input.
    """
    for key, value in (("prompts", n_instruction), ("plain_prompts", n_plain)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"preference.{key} must be a whole number >= 0, got {value!r}")
    names = list(TYPE_NAMES if types is None else types)
    unknown = [t for t in names if t not in TYPE_NAMES]
    if unknown or not names:
        raise ConfigError(f"preference.types: unknown or empty {unknown or names}; known: {', '.join(TYPE_NAMES)}")
    rng = random.Random(seed)
    order = list(range(len(conversations)))
    rng.shuffle(order)
    per_type, skipped, excluded = Counter(), Counter(), Counter()
    instruction, unused = [], []
    for idx in order:
        conv = conversations[idx]
        messages = conv.get("messages") if isinstance(conv, dict) else None
        if validate_messages(messages) is not None:
            excluded["invalid_conversation"] += 1
            continue
        if _is_evaluation_prompt(messages, exclude):
            excluded["matches_evaluation_prompt"] += 1
            continue
        if len(instruction) >= n_instruction:
            unused.append(conv)
            continue
        tiebreak = {name: rng.random() for name in names}
        for name in sorted(names, key=lambda t: (per_type[t], tiebreak[t])):
            result = make_example(conv, name, rng)
            if isinstance(result, str):
                skipped[result] += 1
                continue
            instruction.append(_instruction_prompt(result, conv))
            per_type[name] += 1
            break
        else:
            skipped["no_type_applies"] += 1
            unused.append(conv)
    plain = [_plain_prompt(c) for c in unused[:n_plain]]
    report = {"n_conversations": len(conversations), "seed": seed,
              "asked": {"instruction": n_instruction, "plain": n_plain},
              "made": {"instruction": len(instruction), "plain": len(plain)},
              "per_type": dict(sorted(per_type.items())), "skipped": dict(skipped.most_common()),
              "excluded": dict(excluded.most_common())}
    return instruction + plain, report
