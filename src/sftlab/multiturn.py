"""Multi-turn probes: does the model use what was said in earlier turns?

Most training conversations have one reply, so the held-out prompts say little about
multi-turn behaviour. Each probe in `prompts/multiturn.jsonl` is a short conversation (2 or
3 user turns, with assistant turns written for it) whose last question refers back to a
fact stated earlier ("My dog is called Biscuit..." ... "What is my dog's name again?").
The reply passes when it contains the fact (IFEval's `required_words` check, whole words,
any case), written by the model itself: text copied verbatim from the conversation (a run
of 8 or more words, `sftlab.echo`) earns nothing, and neither does a reply that is not
usable as an answer (category empty, echo or loop, `sftlab.categories`): a base model that
repeats "I'm in Lisbon." twenty times has the word but has not answered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .categories import category
from .errors import DataError
from .ifeval import score_reply, validate_record

PROBES_PATH = Path(__file__).resolve().parent / "prompts" / "multiturn.jsonl"


def earlier_text(messages: list[dict]) -> str:
    """Every turn before the last question: the text a reply may recall but not copy."""
    return "\n".join(m["content"] for m in messages[:-1])


def validate_probe(record: dict) -> None:
    """Raise DataError naming the probe if it is malformed: messages alternate user/assistant,
    start and end with a user turn, have 2 or 3 user turns; each required word is stated in an
    earlier user turn and absent from the last question (else copying the question would pass)."""
    pid = record.get("id")
    messages = record.get("messages")
    if not isinstance(pid, str) or not isinstance(messages, list) or not messages:
        raise DataError(f"probe {pid!r}: needs a string id and a non-empty list of messages")
    roles = [m.get("role") for m in messages]
    if roles[0] != "user" or roles[-1] != "user" or any(a == b for a, b in zip(roles, roles[1:])):
        raise DataError(f"probe {pid!r}: messages must alternate user/assistant, starting and ending with user")
    if not 2 <= roles.count("user") <= 3:
        raise DataError(f"probe {pid!r}: needs 2 or 3 user turns, has {roles.count('user')}")
    validate_record({"id": pid, "prompt": messages[-1]["content"], "checks": record.get("checks")})
    earlier_user = " ".join(m["content"] for m in messages[:-1] if m["role"] == "user")
    for check in record["checks"]:
        for word in check.get("words", []):
            pattern = rf"(?<!\w){re.escape(word)}(?!\w)"
            if not re.search(pattern, earlier_user, re.IGNORECASE):
                raise DataError(f"probe {pid!r}: required word {word!r} is not stated in an earlier user turn")
            if re.search(pattern, messages[-1]["content"], re.IGNORECASE):
                raise DataError(f"probe {pid!r}: required word {word!r} is in the last question itself")


def load_probes(path: str | Path | None = None) -> list[dict]:
    """The probes of a JSONL file (default: the packaged `prompts/multiturn.jsonl`), validated;
    a bad line or probe raises DataError naming the line and the probe."""
    path = Path(path) if path is not None else PROBES_PATH
    records, seen = [], set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            validate_probe(record)
        except (json.JSONDecodeError, DataError) as err:
            raise DataError(f"{path}:{lineno}: {err}") from err
        if record["id"] in seen:
            raise DataError(f"{path}:{lineno}: probe id {record['id']!r} appears twice")
        seen.add(record["id"])
        records.append(record)
    if not records:
        raise DataError(f"{path}: no probes")
    return records


def as_check_record(probe: dict) -> dict:
    """The probe in IFEval's record shape, for `ifeval.score_reply`: its "prompt" is the earlier
    conversation, so recalled facts are fine but long verbatim copies of it earn nothing."""
    return {"id": probe["id"], "prompt": earlier_text(probe["messages"]), "checks": probe["checks"]}


UNUSABLE = ("empty", "echo", "loop")  # reply categories that never pass a probe


def score_probe(probe: dict, reply: str, *, stopped: bool = True) -> dict:
    """{"id", "prompt_level", "instruction_results", "echoed", "category", "checks_level"} for one
    reply: `checks_level` is whether the fact's checks pass (`ifeval.score_reply`, echo-proof);
    `prompt_level` additionally needs a usable reply (category not in `UNUSABLE`)."""
    scored = score_reply(as_check_record(probe), reply)
    kind = category(reply, stopped=stopped, prompt=earlier_text(probe["messages"]))
    return {**scored, "checks_level": scored["prompt_level"], "category": kind,
            "prompt_level": bool(scored["prompt_level"]) and kind not in UNUSABLE}

