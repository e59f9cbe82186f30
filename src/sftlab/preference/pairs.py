"""Judging the SFT model's samples and turning them into preference pairs, every drop counted.

Each sample is judged twice: by its prompt's checks (`sftlab.ifeval.score_reply`, echo-proof:
text copied from the prompt neither earns nor excuses an instruction) and by usability: its
category (`sftlab.categories`) is "answer" (it stopped, is no loop, echo, deflection, bare
greeting or empty reply) and it writes no chat markup or turn of its own (`metrics.role_leak`).

One pair per prompt, by these rules (`select`):
  instruction prompt  chosen: a sample that passes every check and is usable; rejected: one
                      that is not (fails a check, or is unusable). Where no sample is
                      acceptable, the best usable sample (most checks passed, then the first)
                      repaired by the instruction rewrites of `sftlab.data.instructions`, fed
                      the prompt's own numbers and phrases, is the chosen reply against that
                      same sample as written ("repaired"; only types whose rewrite can meet any
                      instruction of theirs: not min_words, keywords or avoid_words).
  plain prompt        chosen: a usable sample, or the training reply when none is ("reference");
                      rejected: an unusable sample (a loop, deflection, echo, cut-off reply ...).
Prompts without a pair are counted by reason (`DROP_REASONS`). Rejection-sampling fine-tuning
trains on the chosen side of every prompt that has one, pair or not.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from sftlab.categories import category
from sftlab.data.instructions import _FENCE, _parts
from sftlab.ifeval import score_reply
from sftlab.metrics import role_leak

# Types whose rewrite makes any reply meet any instruction of that type (given its numbers);
# min_words cannot lengthen a reply, keywords and avoid_words pick their own words.
REPAIRABLE = frozenset({"lowercase", "uppercase", "no_commas", "max_words", "max_sentences", "bullets", "numbered",
                        "paragraphs", "quotation", "json", "title", "starts_with", "ends_with", "postscript"})
DROP_REASONS = {
    "all_samples_pass": "every sample passes its checks and is usable: nothing to prefer it to",
    "no_usable_sample": "no sample passes and none is usable enough to repair",
    "not_repairable": "no sample passes and the instruction type has no rewrite that repairs a reply",
    "repair_failed": "no sample passes and the rewrite of the best one does not pass either",
    "no_passing_sample": "no sample passes (repair off)",
    "all_samples_usable": "plain prompt: every sample is usable, none to reject",
    "no_samples": "the prompt has no samples",
}
CHOSEN_KINDS = ("sample", "repaired", "reference")


def check_record(prompt: dict) -> dict:
    """The `sftlab.ifeval` record of an instruction prompt: its last user turn and its checks."""
    return {"id": prompt["id"], "prompt": prompt["messages"][-1]["content"], "checks": prompt["checks"]}


def _user_text(prompt: dict) -> str:
    return prompt["messages"][-1]["content"]


def judge(prompt: dict, sample: dict) -> dict:
    """One sample's verdicts: category, leak, usable, and (instruction prompts) checks passed and passes."""
    cat = category(sample["text"], stopped=bool(sample["stopped"]), prompt=_user_text(prompt))
    leak = role_leak(sample["text"])
    out = {"category": cat, "leak": leak, "usable": cat == "answer" and not leak, "checks_passed": None,
           "passes": None}
    if prompt["kind"] == "instruction":
        scored = score_reply(check_record(prompt), sample["text"])
        out["checks_passed"] = scored["instruction_results"]
        out["passes"] = bool(scored["prompt_level"])
    return out


class _PinnedRandom(random.Random):
    """A seeded rng whose `choice` returns a pinned value whenever it is among the options: a rewrite
    then uses the prompt's own number or phrase ("exactly 3 bullets", "end with ...") instead of
    drawing one."""

    def __init__(self, pinned: list, seed: int = 0):
        super().__init__(seed)
        self.pinned = list(pinned)

    def choice(self, seq):
        for value in self.pinned:
            if any(type(x) is type(value) and x == value for x in seq):
                return value
        return super().choice(seq)


def _pinned_values(prompt: dict) -> list:
    values = [v for check in prompt["checks"] for k, v in check.items() if k in ("n", "phrase", "marker")]
    bullet = re.search(r'"([-*]) "', _user_text(prompt))  # the bullet the phrasing asked for
    return values + ([bullet.group(1)] if bullet else [])


def repair(prompt: dict, text: str, *, seed: int = 0) -> tuple[str | None, str | None]:
    """(`text` rewritten to follow the prompt's instructions, None), by the same rewrites, in the
    same order, that made the instruction examples; (None, why not) when it cannot be: the
    rewrite's own skip reason ("has_table", "too_few_sentences", ...), "not_repairable" or
    "fails_check". A repaired text passes every check of the prompt."""
    parts = _parts(prompt["type"])
    if any(part.name not in REPAIRABLE for part in parts):
        return None, "not_repairable"
    rng = _PinnedRandom(_pinned_values(prompt), seed)
    out = text
    for part in parts:
        if not part.code_ok and _FENCE in out:
            return None, "has_code_fence"
        result = part.rewrite(out, prompt["request"], rng)
        if isinstance(result, str):
            return None, result
        out = result[0]
    out = out.strip()
    if not out or not score_reply(check_record(prompt), out)["prompt_level"]:
        return None, "fails_check"
    return out, None


def _pair(prompt, chosen, kind, rejected=None, rejected_stopped=True, dropped=None, **extra) -> dict:
    return {"id": prompt["id"], "kind": prompt["kind"], "type": prompt["type"], "chosen": chosen,
            "chosen_kind": kind, "rejected": rejected, "rejected_stopped": rejected_stopped, "dropped": dropped,
            **extra}


def select(prompt: dict, samples: list[dict], verdicts: list[dict], *, rng: random.Random,
           allow_repair: bool = True, seed: int = 0) -> dict:
    """The chosen and rejected reply of one prompt by the module's rules, or the reason there is no pair.

    Returns {"id", "kind", "type", "chosen" (text or None), "chosen_kind" ("sample", "repaired",
    "reference" or None), "rejected" (text or None), "rejected_stopped", "dropped" (a
    `DROP_REASONS` key or None), "chosen_index", "rejected_index", "repair_skip"}; a chosen reply
    without a rejected one still trains rejection sampling."""
    if not samples:
        return _pair(prompt, None, None, dropped="no_samples")
    pick = {"chosen_index": None, "rejected_index": None}
    if prompt["kind"] == "plain":
        usable = [i for i, v in enumerate(verdicts) if v["usable"]]
        unusable = [i for i, v in enumerate(verdicts) if not v["usable"]]
        if usable:
            pick["chosen_index"] = rng.choice(usable)
            chosen, kind = samples[pick["chosen_index"]]["text"].strip(), "sample"
        else:
            chosen, kind = prompt["reference"].strip(), "reference"
        if not unusable:
            return _pair(prompt, chosen, kind, dropped="all_samples_usable", **pick)
        pick["rejected_index"] = rng.choice(unusable)
        bad = samples[pick["rejected_index"]]
        return _pair(prompt, chosen, kind, bad["text"], bool(bad["stopped"]), **pick)
    good = [i for i, v in enumerate(verdicts) if v["passes"] and v["usable"]]
    bad = [i for i, v in enumerate(verdicts) if not (v["passes"] and v["usable"])]
    if good:
        pick["chosen_index"] = rng.choice(good)
        chosen = samples[pick["chosen_index"]]["text"].strip()
        if not bad:
            return _pair(prompt, chosen, "sample", dropped="all_samples_pass", **pick)
        pick["rejected_index"] = rng.choice(bad)
        worse = samples[pick["rejected_index"]]
        return _pair(prompt, chosen, "sample", worse["text"], bool(worse["stopped"]), **pick)
    if not allow_repair:
        return _pair(prompt, None, None, dropped="no_passing_sample", **pick)
    usable = [i for i, v in enumerate(verdicts) if v["usable"]]
    if not usable:
        return _pair(prompt, None, None, dropped="no_usable_sample", **pick)
    best = max(usable, key=lambda i: (sum(verdicts[i]["checks_passed"]), -i))
    fixed, why = repair(prompt, samples[best]["text"], seed=seed)
    if why is not None:
        return _pair(prompt, None, None, dropped="not_repairable" if why == "not_repairable" else "repair_failed",
                     repair_skip=why, **pick)
    verdict = judge(prompt, {"text": fixed, "stopped": True})
    if not (verdict["passes"] and verdict["usable"]):
        return _pair(prompt, None, None, dropped="repair_failed", repair_skip=f"repaired_{verdict['category']}",
                     **pick)
    pick["rejected_index"] = best
    return _pair(prompt, fixed, "repaired", samples[best]["text"], True, **pick)


def build_pairs(prompts: list[dict], samples: dict[str, list[dict]], *, seed: int, allow_repair: bool = True,
                n_examples: int = 2) -> tuple[list[dict], list[list[dict]], dict]:
    """Judge every prompt's samples (`samples[prompt id]`, each {"text", "stopped"}) and select its pair.

    Returns (selections, verdicts, report): one `select` result and one list of `judge` results per
    prompt, in the order of `prompts`, and the report pairs_report.json holds (`pairs_report`).
    Deterministic for a seed."""
    rng = random.Random(seed)
    selections, verdicts = [], []
    for prompt in prompts:
        own = samples.get(prompt["id"], [])
        judged = [judge(prompt, s) for s in own]
        selections.append(select(prompt, own, judged, rng=rng, allow_repair=allow_repair, seed=seed))
        verdicts.append(judged)
    return selections, verdicts, pairs_report(prompts, verdicts, selections, n_examples=n_examples)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _type_row(rows: list[tuple[dict, list[dict], dict]]) -> dict:
    n_samples = sum(len(v) for _, v, _ in rows)
    passing = sum(bool(x["passes"]) for _, v, _ in rows for x in v)
    acceptable = sum(bool(x["passes"] and x["usable"]) for _, v, _ in rows for x in v)
    return {"prompts": len(rows), "samples": n_samples, "passing": passing, "pass_rate": _share(passing, n_samples),
            "acceptable": acceptable,
            "prompts_with_acceptable": sum(any(x["passes"] and x["usable"] for x in v) for _, v, _ in rows),
            "pairs": sum(s["rejected"] is not None and s["chosen"] is not None for _, _, s in rows),
            "repaired": sum(s["chosen_kind"] == "repaired" for _, _, s in rows),
            "dropped": dict(Counter(s["dropped"] for _, _, s in rows if s["dropped"]).most_common())}


def pairs_report(prompts: list[dict], verdicts: list[list[dict]], selections: list[dict], *,
                 n_examples: int = 2) -> dict:
    """What the samples were before training and what became of each prompt: sample pass and usable
    rates (overall, per instruction type, per check), pairs by kind and by the kind of their chosen
    reply, repairs, the chosen replies rejection sampling trains on, every prompt without a pair
    counted by reason (with `DROP_REASONS` saying what each means), and a few example pairs."""
    rows = list(zip(prompts, verdicts, selections))
    flat = [x for _, v, _ in rows for x in v]
    pairs = [s for s in selections if s["chosen"] is not None and s["rejected"] is not None]
    report: dict = {
        "samples": {"n": len(flat), "stop_rate": _share(sum(x["category"] != "cut" for x in flat), len(flat)),
                    "usable_rate": _share(sum(x["usable"] for x in flat), len(flat)),
                    "leaks": sum(x["leak"] for x in flat),
                    "categories": dict(Counter(x["category"] for x in flat).most_common())},
        "prompts": {kind: sum(p["kind"] == kind for p in prompts) for kind in ("instruction", "plain")},
    }
    inst = [r for r in rows if r[0]["kind"] == "instruction"]
    if inst:
        per_check: dict[str, list[int]] = {}
        for prompt, judged, _ in inst:
            for x in judged:
                for check, ok in zip(prompt["checks"], x["checks_passed"]):
                    per_check.setdefault(check["type"], [0, 0])[0] += int(ok)
                    per_check[check["type"]][1] += 1
        by_type: dict[str, list] = {}
        for r in inst:
            by_type.setdefault(r[0]["type"], []).append(r)
        report["instruction"] = {**_type_row(inst),
                                 "per_type": {t: _type_row(rs) for t, rs in sorted(by_type.items())},
                                 "per_check": {c: {"passed": a, "samples": n, "rate": _share(a, n)}
                                               for c, (a, n) in sorted(per_check.items())}}
    plain = [r for r in rows if r[0]["kind"] == "plain"]
    if plain:
        n_plain = sum(len(v) for _, v, _ in plain)
        report["plain"] = {"prompts": len(plain), "samples": n_plain,
                           "usable_rate": _share(sum(x["usable"] for _, v, _ in plain for x in v), n_plain),
                           "reference_chosen": sum(s["chosen_kind"] == "reference" for _, _, s in plain)}
    report["pairs"] = {"n": len(pairs), "by_kind": dict(Counter(s["kind"] for s in pairs)),
                       "by_chosen_kind": dict(Counter(s["chosen_kind"] for s in pairs)),
                       "repaired": sum(s["chosen_kind"] == "repaired" for s in pairs),
                       "rejected_not_stopped": sum(not s["rejected_stopped"] for s in pairs)}
    chosen = [s for s in selections if s["chosen"] is not None]
    report["rft"] = {"n": len(chosen), "by_kind": dict(Counter(s["kind"] for s in chosen)),
                     "by_chosen_kind": dict(Counter(s["chosen_kind"] for s in chosen))}
    report["dropped"] = dict(Counter(s["dropped"] for s in selections if s["dropped"]).most_common())
    report["repair_skips"] = dict(Counter(s["repair_skip"] for s in selections if s.get("repair_skip")).most_common())
    report["drop_reasons"] = DROP_REASONS
    examples = []
    for kind in CHOSEN_KINDS:  # the first pairs of each kind of chosen reply
        of_kind = [(p, s) for p, _, s in rows if s["chosen_kind"] == kind and s["rejected"] is not None]
        examples += [{"id": s["id"], "kind": s["kind"], "type": s["type"], "chosen_kind": kind,
                      "prompt": _user_text(p), "chosen": s["chosen"], "rejected": s["rejected"]}
                     for p, s in of_kind[:n_examples]]
    report["examples"] = examples
    return report
