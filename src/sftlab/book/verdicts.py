"""Verdicts: how two systems (or two runs) compare, computed from the paired intervals.

`compare` and `tally` decide, metric by metric, whether system a is better, worse or not
separable from system b (the paired 95% interval on the same prompts excludes zero or not;
runs without paired differences fall back to whether the two separate intervals overlap).
Chapter 6 prints the comparisons and verdicts (@sec-eval-results, Q5.3, Q5.5), the preface
its one-line verdict, chapter 5 the loss comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import METRIC_SETS, Metric, label, metric_spec
from .formatting import fmt_ci, fmt_diff, fmt_setting
from .results import Results, comparison, metric_entry


@dataclass
class Comparison:
    """Two systems on one metric: which is higher and, from the paired difference on the same prompts
    (metrics.json "comparisons"), whether this evaluation can tell them apart. Runs without paired
    differences fall back to whether the two separate 95% intervals overlap."""

    metric: Metric
    a: str
    b: str
    a_entry: dict
    b_entry: dict
    paired: dict | None = None

    @property
    def difference(self) -> float:
        return self.a_entry["value"] - self.b_entry["value"]

    @property
    def direction(self) -> str:
        """"higher", "lower" or "equal": system a relative to system b."""
        d = self.difference
        return "equal" if abs(d) < 1e-12 else ("higher" if d > 0 else "lower")

    @property
    def separated(self) -> bool | None:
        """True when the paired 95% interval excludes 0 (else: the separate intervals do not overlap);
        None when there is no interval to judge by."""
        if self.paired is not None:
            low, high = self.paired["ci"]
            return not (low <= 0 <= high)
        ca, cb = self.a_entry.get("ci"), self.b_entry.get("ci")
        if not ca or not cb:
            return None
        return ca[1] < cb[0] or cb[1] < ca[0]

    @property
    def a_better(self) -> bool | None:
        """Whether a's value is the better one (None for metrics with no better direction, or a tie)."""
        if not self.metric.better or self.direction == "equal":
            return None
        return (self.direction == "higher") == (self.metric.better == "higher")

    def sentence(self) -> str:
        """The comparison as one Markdown sentence, every number from the results."""
        m = self.metric
        a_txt, b_txt = fmt_ci(self.a_entry, m.kind), fmt_ci(self.b_entry, m.kind)
        head = f"{m.label}: **{label(self.a)}** {a_txt} versus **{label(self.b)}** {b_txt}"
        if self.direction == "equal" and not self.paired:
            return head + " — the same value."
        verdict = f"{label(self.a)} is {self.direction}" if self.direction != "equal" else "the same value"
        if self.a_better is not None:
            verdict += f" ({'better' if self.a_better else 'worse'}: {m.better} is better)"
        if self.paired is not None:
            p = self.paired
            counts = (f"; {label(self.a)} is higher on {p['n_a_higher']} and lower on {p['n_b_higher']} of "
                      f"{p['n']} prompts" if "n_a_higher" in p else "")
            verdict += f"; paired difference {fmt_diff(p, m.kind)}{counts}"
            verdict += (": the paired 95% interval excludes zero" if self.separated
                        else ": the paired 95% interval includes zero, so this evaluation cannot "
                             "tell the two apart")
        elif self.separated is True:
            verdict += ", and the 95% intervals do not overlap"
        elif self.separated is False:
            verdict += ", but the 95% intervals overlap: this evaluation cannot tell the two apart"
        else:
            verdict += " (no interval for this corpus-level statistic)"
        return f"{head}. {verdict}."


def compare(results: Results, metric: str, a: str = "sft", b: str = "base_chat",
            set: str = "heldout") -> Comparison | None:
    """Compare systems a and b on `metric`; None when either was not evaluated on it."""
    ea, eb = metric_entry(results, a, metric, set), metric_entry(results, b, metric, set)
    if not ea or not eb or ea.get("value") is None or eb.get("value") is None:
        return None
    return Comparison(metric_spec(metric, set), a, b, ea, eb, comparison(results, a, b, metric, set))


FINDING_KEYS = (("loss", "mean_nll"), ("loss", "content_nll"), ("loss", "eot_nll"), ("heldout", "stop_rate"),
                ("heldout", "role_leak_rate"), ("heldout", "canned_rate"), ("heldout", "rougeL"),
                ("heldout", "bleu"), ("heldout", "embedding_similarity"), ("heldout", "distinct_2_matched"),
                ("heldout", "reply_length"), ("ifeval", "prompt_level"), ("ifeval", "instruction_level"))


# Left out of verdicts: perplexity repeats the loss; distinct-1/2 over all replies mostly measure length.
NOT_TALLIED = ("perplexity", "distinct_1", "distinct_2")


def findings(results: Results, a: str = "sft", b: str = "base_chat", keys=FINDING_KEYS) -> str:
    """A Markdown bullet list comparing a with b on each metric both have (empty if none)."""
    lines = []
    for set_, key in keys:
        c = compare(results, key, a, b, set_)
        if c is not None:
            lines.append(f"- {c.sentence()}")
    return "\n".join(lines)


def tally(results: Results, a: str = "sft", b: str = "base_chat", set: str = "heldout") -> dict:
    """Metrics with a better direction, sorted by how a compares with b.

    better / worse: the paired 95% interval excludes 0 (or, without one, the separate
    intervals do not overlap); unclear: it includes 0 (or they overlap, or the values are
    equal); better_no_ci / worse_no_ci: corpus statistics without an interval.
    """
    specs = METRIC_SETS[set]
    out = {"better": [], "worse": [], "unclear": [], "better_no_ci": [], "worse_no_ci": []}
    for m in specs:
        c = compare(results, m.key, a, b, set)
        if c is None or not m.better or m.key in NOT_TALLIED:
            continue
        if c.a_better is None or c.separated is False:
            out["unclear"].append(m.label)
        elif c.separated is None:
            out["better_no_ci" if c.a_better else "worse_no_ci"].append(m.label)
        else:
            out["better" if c.a_better else "worse"].append(m.label)
    return out


def tally_sentence(results: Results, a: str = "sft", b: str = "base_chat") -> str:
    """Over every metric with a better direction: where a beats b, trails it, or cannot be told apart."""
    if a not in results.systems + list(results.metrics.get("heldout_loss") or {}) or \
            b not in results.systems + list(results.metrics.get("heldout_loss") or {}):
        return f"This run did not evaluate both {label(a)} and {label(b)}."
    parts = {"better": [], "worse": [], "unclear": [], "better_no_ci": [], "worse_no_ci": []}
    for set_ in ("loss", "heldout", "ifeval"):
        t = tally(results, a, b, set_)
        for k in parts:
            parts[k] += t[k]
    if not any(parts.values()):
        return f"No metric with a better direction was measured for both {label(a)} and {label(b)}."

    def names(xs):
        return ", ".join(xs) if xs else "none"

    paired = bool(results.metrics.get("comparisons"))
    how = "a paired 95% interval that excludes zero" if paired else "non-overlapping 95% intervals"
    text = (f"Comparing **{label(a)}** with **{label(b)}** on every metric that has a better direction: "
            f"{label(a)} is better, with {how}, on {names(parts['better'])}; "
            f"worse, with {how}, on {names(parts['worse'])}; "
            f"and not separable at this sample size on {names(parts['unclear'])}.")
    if parts["better_no_ci"] or parts["worse_no_ci"]:
        text += (f" Among corpus statistics without an interval, it is better on {names(parts['better_no_ci'])} "
                 f"and worse on {names(parts['worse_no_ci'])}.")
    return text


def run_difference_sentence(rows: list[dict], a_label: str, b_label: str) -> str:
    """Which metrics two runs of the trained model differ on, by the paired intervals, in one sentence."""
    from ..stats import verdict

    parts = {"better": [], "worse": [], "unclear": []}
    for c in rows:
        m = metric_spec(c["metric"], c["set"])
        v = verdict(c, m.better)
        if v:
            parts[v].append(f"{m.label} ({fmt_diff(c, m.kind)})")
    if not any(parts.values()):
        return f"No metric was measured for both {a_label} and {b_label}."

    def names(xs):
        return "; ".join(xs) if xs else "none"

    return (f"Prompt by prompt, {a_label} against {b_label}: better on {names(parts['better'])}; worse on "
            f"{names(parts['worse'])}; not separable on {names(parts['unclear'])}.")


def recipe_difference_sentence(rows: list[dict], a_label: str, b_label: str, meant: str) -> str:
    """What two compared runs' recipes differ in (`compare.recipe_differences`), and whether the
    comparison is therefore about the `meant` key alone."""
    if not rows:
        return f"The recipes of {a_label} and {b_label} are the same."
    listed = "; ".join(f"`{r['key']}` {fmt_setting(r['a'])} against {fmt_setting(r['b'])}" for r in rows)
    others = [r["key"] for r in rows if r["key"] != meant and not r["key"].startswith(meant + ".")]
    if not others:
        return f"The recipes differ only in {listed}, so the differences below are that choice's."
    return (f"The recipes differ in {listed}. The differences below are therefore not `{meant}`'s alone: "
            f"{len(others)} other setting{'s' if len(others) > 1 else ''} changed between the two runs "
            f"as well; a run of {b_label} with the same settings would isolate it.")


def condition_difference_sentence(rows: list[dict], a_label: str, b_label: str) -> str:
    """Where two compared runs ran differently (`compare.condition_differences`): "" when nowhere."""
    if not rows:
        return ""
    listed = "; ".join(f"`{r['key']}` {fmt_setting(r['a'])} against {fmt_setting(r['b'])}" for r in rows)
    return (f"The two runs also ran under different conditions ({listed}): part of any difference below "
            f"may come from those, not from the recipe (bf16 autocast rounds every product of the training "
            f"steps); a run of {b_label} on the same kind of machine would separate them.")


def _counted_verdicts(results: Results, a: str, b: str) -> dict:
    parts = {"better": [], "worse": [], "unclear": []}
    for set_ in ("loss", "heldout", "ifeval", "multiturn"):
        t = tally(results, a, b, set_)
        for k in parts:
            parts[k] += t[k]
    return parts


def glance_sentence(results: Results, a: str = "sft", b: str = "base_chat") -> str:
    """The preface's verdict in one line: how many metrics training moved, each way (details in chapter 6)."""
    parts = _counted_verdicts(results, a, b)
    n = sum(len(v) for v in parts.values())
    if not n:
        return f"This run did not evaluate both {label(a)} and {label(b)}."
    return (f"Against {label(b)}, **{label(a)}** is better on {len(parts['better'])} of the {n} metrics that "
            f"have a better direction, worse on {len(parts['worse'])} and not separable on "
            f"{len(parts['unclear'])}, by paired 95% intervals; @sec-eval-results names them.")


def largest_changes(results: Results, a: str = "sft", b: str = "base_chat", k: int = 2) -> str:
    """The `k` largest rate changes in each direction (better, worse) from the paired comparisons, in words."""
    from ..stats import verdict

    rows = []
    for c in results.metrics.get("comparisons") or []:
        if c["a"] != a or c["b"] != b:
            continue
        m = metric_spec(c["metric"], c["set"])
        v = verdict(c, m.better)
        if m.kind == "rate" and v in ("better", "worse"):
            rows.append((v, abs(c["difference"]), f"{m.label} ({fmt_diff(c, m.kind)})"))
    best = [t for v, _, t in sorted((r for r in rows if r[0] == "better"), key=lambda r: -r[1])[:k]]
    worst = [t for v, _, t in sorted((r for r in rows if r[0] == "worse"), key=lambda r: -r[1])[:k]]
    if not best and not worst:
        return f"No rate separates {label(a)} from {label(b)} in this run."
    return (f"{label(a)} against {label(b)}: the largest gains are " + ("; ".join(best) or "none")
            + ", the largest losses " + ("; ".join(worst) or "none") + ".")
