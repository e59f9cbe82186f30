"""What a valid conversation is, and the stable reasons a record is not one.

Holds `validate_messages` (TRL's `{"role", "content"}` rules, each failure named by a
snake_case skip reason such as `first_not_user`), `normalize_messages` (strip whitespace,
drop a trailing user turn), the converters from source formats to TRL messages,
`sharegpt_to_messages` (with the `SHAREGPT_ROLES` map) and `merge_speaker_turns` (chit-chat
logs), and `N_EXAMPLES`, how many record ids are kept per reason. Every reader in
`sftlab.data.readers` passes its records through these; the reasons they return are step 2,
validation, of the "Preprocessing, step by step" section of chapter 3 "data"
(chapters/03-data.qmd, @tbl-skipped) and the `skipped` counts of the data report.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

ROLES = ("system", "user", "assistant")

# ShareGPT's `from` field: the scrapes name the assistant after whichever product answered.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "assistant": "assistant",
    "system": "system",
}

N_EXAMPLES = 5  # record ids kept per skip reason: enough to find them, small enough to print


def validate_messages(messages: Any) -> str | None:
    """Return None for a valid TRL conversation, else a short stable reason.

    Valid: a non-empty list of `{"role", "content"}` dicts with string values, roles in
    system/user/assistant, at most one system message and only first, then user and
    assistant strictly alternating, starting with user and ending with assistant, and no
    empty or whitespace-only content.

    >>> validate_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    >>> validate_messages([{"role": "user", "content": "Hi"}])
    'no_assistant_turn'
    """
    if not isinstance(messages, list):
        return "bad_type"
    if not messages:
        return "no_messages"
    for m in messages:
        if not isinstance(m, dict):
            return "bad_type"
        for key in ("role", "content"):
            if key not in m:
                return f"missing_key:{key}"
        if not isinstance(m["role"], str) or not isinstance(m["content"], str):
            return "bad_type"
        if m["role"] not in ROLES:
            return f"unknown_role:{m['role'][:30]}"
    for m in messages:
        if not m["content"].strip():
            return "empty_content"
    for m in messages:
        try:
            m["content"].encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, e.g. from a "\ud800" escape in scraped JSON
            return "invalid_unicode"
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        return "system_not_first"
    if "assistant" not in roles:
        return "no_assistant_turn"
    body = roles[1:] if roles[0] == "system" else roles
    if body[0] != "user":
        return "first_not_user"
    if any(role != ("user", "assistant")[i % 2] for i, role in enumerate(body)):
        return "roles_not_alternating"
    if body[-1] != "assistant":
        return "last_not_assistant"
    return None


def normalize_messages(messages: Any) -> tuple[Any, bool]:
    """Strip content whitespace, keep only role/content, and drop one trailing user turn.

    Returns `(messages, trimmed)`. A final user message has no reply to learn from, and
    ShareGPT conversations often end that way (the scrape stopped mid-exchange), so it is
    dropped rather than rejecting the whole conversation; only when an assistant turn comes
    before it, so that `[user]` alone still fails as `no_assistant_turn`. Anything malformed
    is passed through unchanged for `validate_messages` to name.
    """
    if not isinstance(messages, list):
        return messages, False
    out = []
    for m in messages:
        if isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m:
            m = {"role": m["role"], "content": m["content"].strip()}
        out.append(m)
    last = out[-1] if out else None
    if (
        isinstance(last, dict)
        and last.get("role") == "user"
        and any(isinstance(m, dict) and m.get("role") == "assistant" for m in out[:-1])
    ):
        return out[:-1], True
    return out, False


def sharegpt_to_messages(turns: Any) -> list[dict] | str:
    """Convert ShareGPT `[{"from": "human", "value": ...}, ...]` to TRL messages.

    Returns a reason string instead when a turn cannot be mapped, e.g.
    `"unknown_role:tool"`. Turns already in `role`/`content` form are accepted too.
    """
    if not isinstance(turns, list):
        return "bad_type"
    messages = []
    for t in turns:
        if not isinstance(t, dict):
            return "bad_type"
        if "from" not in t and "role" in t:  # already TRL-shaped
            messages.append(t)
            continue
        for key in ("from", "value"):
            if key not in t:
                return f"missing_key:{key}"
        if not isinstance(t["from"], str):
            return "bad_type"
        role = SHAREGPT_ROLES.get(t["from"].strip().lower())
        if role is None:
            return f"unknown_role:{t['from'][:30]}"
        messages.append({"role": role, "content": t["value"]})
    return messages


def merge_speaker_turns(utterances: Iterable[tuple[str, str]], sep: str = "\n") -> list[dict] | str:
    """Merge consecutive utterances of one speaker; first speaker -> user, other -> assistant.

    Chat-room logs send one thought as several messages; a chat model sees one turn each.
    Returns "too_many_speakers" for a third speaker.

    >>> merge_speaker_turns([("a", "Hi"), ("a", "How are you?"), ("b", "Fine")])
    [{'role': 'user', 'content': 'Hi\\nHow are you?'}, {'role': 'assistant', 'content': 'Fine'}]
    """
    roles: dict[str, str] = {}
    messages: list[dict] = []
    for speaker, group in itertools.groupby(utterances, key=lambda u: u[0]):
        if speaker not in roles:
            if len(roles) == 2:
                return "too_many_speakers"
            roles[speaker] = "user" if not roles else "assistant"
        messages.append({"role": roles[speaker], "content": sep.join(text for _, text in group)})
    return messages

