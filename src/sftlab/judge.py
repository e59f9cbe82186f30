"""A pairwise judge, when one is configured: which of two systems' replies to the same prompt is better?

`evaluation.judge: SPEC` (a local model folder or a Hub id, such as an instruct model of several
billion parameters; off by default) or `sftlab evaluate-extra DIR --sets judge --judge SPEC` asks
that model, with the prompt in `prompts/judge.txt`, to compare the run's replies pair by pair
(`PAIRS`, on the held-out and IFEval-style prompts). Every pair is judged in both orders, so a
judge that prefers whichever reply comes first cancels out: system a wins a prompt when the judge
picks it in both orders, loses when it picks the other in both, and ties otherwise (a tie
verdict, a verdict that flips with the order, or an answer that names neither). Win, tie and loss
rates carry Wilson intervals. Without a judge the section says it was not used and why (`not_used`):
no model that could judge runs offline here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ConfigError, SftlabError
from .stats import rate

PROMPT_PATH = Path(__file__).resolve().parent / "prompts" / "judge.txt"
PAIRS = (("sft", "base_chat"), ("sft", "reference"))
SETS = ("heldout", "ifeval")
MAX_REPLY_CHARS = 1500
VERDICT_TOKENS = 8
NOT_USED = ("not used (no judge configured; the Hub is needed for an instruct model of several billion "
            "parameters)")
_VERDICT = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


def not_used() -> dict:
    return {"used": False, "note": NOT_USED, "prompt_file": "src/sftlab/prompts/judge.txt"}


def load_judge(spec: str):
    """(model, tokenizer) of the judge; a spec that does not load is a ConfigError naming it."""
    import torch

    from .sources import load_model

    gpu = torch.cuda.is_available()  # a judge of billions of parameters wants one: bf16 there
    try:
        model, tok = load_model(spec, dtype="bfloat16" if gpu else "float32", device="cuda" if gpu else None)
    except (SftlabError, OSError, ValueError, KeyError) as err:
        raise ConfigError(f"evaluation.judge: the judge model {spec!r} does not load: "
                          f"{str(err).splitlines()[0][:300]}") from err
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def judge_text(prompt: str, reply_a: str, reply_b: str) -> str:
    """The judge's instruction with the user's message and the two replies filled in."""
    template = PROMPT_PATH.read_text(encoding="utf-8")
    cut = lambda t: t if len(t) <= MAX_REPLY_CHARS else t[:MAX_REPLY_CHARS] + " [...]"  # noqa: E731
    return template.format(prompt=prompt, reply_a=cut(reply_a), reply_b=cut(reply_b))


def _prompt_ids(tok, text: str) -> list[int]:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + tok(text + "\n", add_special_tokens=False)["input_ids"]


def parse_verdict(text: str) -> str:
    """"A", "B", "tie" (the first one the judge writes) or "invalid": "Reply B is better." -> "B"."""
    m = _VERDICT.search(text)
    if not m:
        return "invalid"
    word = m.group(1)
    return "tie" if word.lower() == "tie" else word.upper()


def outcome(a_first: str, b_first: str) -> str:
    """System a's result from the verdicts with a's reply shown first (as A) and second (as B)."""
    if a_first == "A" and b_first == "B":
        return "win"
    if a_first == "B" and b_first == "A":
        return "loss"
    return "tie"


def judge_pairs(model, tok, items: Sequence[tuple[str, str, str]], *, progress: bool = True,
                batch_size: int = 8) -> list[dict]:
    """For each (prompt, reply of a, reply of b): the judge's raw answers in both orders, the two
    verdicts and a's outcome."""
    from .evaluate import generate_replies
    from .talk import stop_token_ids

    prompts = [_prompt_ids(tok, judge_text(p, ra, rb)) for p, ra, rb in items]
    prompts += [_prompt_ids(tok, judge_text(p, rb, ra)) for p, ra, rb in items]
    out = generate_replies(model, tok, prompts, stop_ids=stop_token_ids(tok), max_new_tokens=VERDICT_TOKENS,
                           batch_size=batch_size, desc="judge", progress=progress)
    n = len(items)
    rows = []
    for first, second in zip(out[:n], out[n:]):
        v1, v2 = parse_verdict(first["text"]), parse_verdict(second["text"])
        rows.append({"a_first": first["text"], "b_first": second["text"], "verdicts": [v1, v2],
                     "outcome": outcome(v1, v2), "consistent": v1 in ("A", "B") and v2 in ("A", "B") and v1 != v2})
    return rows


def win_tie_loss(outcomes: Sequence[str]) -> dict:
    """Win, tie and loss rates with Wilson intervals: ["win", "tie", "win", "loss"] -> win 0.5, ..."""
    if not outcomes:
        raise ValueError("win_tie_loss needs at least one judged pair")
    return {k: rate([o == k for o in outcomes]) for k in ("win", "tie", "loss")} | {"n": len(outcomes)}


def judge_run(samples: Sequence[Mapping], spec: str | None, *, progress: bool = True, n_resamples: int = 1000,
              seed: int = 0) -> tuple[dict, list[dict]]:
    """metrics.json's "judge" section and the samples.jsonl rows of set "judge": every pair of `PAIRS`
    on the run's held-out and IFEval-style replies, judged in both orders. Without `spec`: `not_used()`."""
    del n_resamples, seed  # win/tie/loss are rates: Wilson intervals
    if not spec:
        return not_used(), []
    model, tok = load_judge(spec)
    rows, section = [], {"used": True, "judge": spec, "prompt_file": "src/sftlab/prompts/judge.txt",
                         "both_orders": True, "pairs": {}}
    for a, b in PAIRS:
        chosen = [r for r in samples if r.get("set") in SETS and a in r.get("replies", {}) and b in r["replies"]]
        if not chosen:
            continue
        items = [("\n".join(m["content"] for m in r["prompt"] if m.get("role") == "user"),
                  r["replies"][a]["text"], r["replies"][b]["text"]) for r in chosen]
        judged = judge_pairs(model, tok, items, progress=progress)
        for r, j in zip(chosen, judged):
            rows.append({"set": "judge", "id": f"{a}-vs-{b}/{r['set']}/{r['id']}", "pair": [a, b],
                         "source_set": r["set"], "source_id": r["id"], "replies": {}, "judge": j})
        entry = {"all": win_tie_loss([j["outcome"] for j in judged]),
                 "inconsistent": sum(not j["consistent"] for j in judged),
                 "invalid": sum("invalid" in j["verdicts"] for j in judged)}
        for set_ in SETS:
            picked = [j["outcome"] for r, j in zip(chosen, judged) if r["set"] == set_]
            if picked:
                entry[set_] = win_tie_loss(picked)
        section["pairs"][f"{a}-vs-{b}"] = entry
    return section, rows
