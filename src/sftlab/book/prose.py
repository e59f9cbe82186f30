"""Sentences computed from a run's numbers: comparisons, verdicts and notes the chapters print.

No result is typed into the book's prose: where a chapter states a finding (the preface's
verdict, chapter 6's comparisons and analysis, chapter 5's loss trend, chapter 3's data
summary), the sentence is built here from `results/NAME/`, so it stays true when the run
changes. `compare` and `tally` decide direction and whether two systems' 95% intervals
overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import _ALL_METRICS, HELDOUT_METRICS, IFEVAL_METRICS, LOSS_METRICS, Metric, label
from .formatting import fmt_ci, fmt_count, fmt_duration
from .results import Results, metric_entry, samples
from .tables import role_leak_table



@dataclass
class Comparison:
    """Two systems on one metric: which is higher, and whether their 95% intervals overlap."""

    metric: Metric
    a: str
    b: str
    a_entry: dict
    b_entry: dict

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
        """True when the intervals do not overlap; None when either has no interval."""
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
        if self.direction == "equal":
            return head + " — the same value."
        verdict = f"{label(self.a)} is {self.direction}"
        if self.a_better is not None:
            verdict += f" ({'better' if self.a_better else 'worse'}: {m.better} is better)"
        if self.separated is True:
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
    return Comparison(_ALL_METRICS.get(metric, Metric(metric, metric, "score", "", "")), a, b, ea, eb)


def findings(results: Results, a: str = "sft", b: str = "base_chat",
             keys=(("loss", "mean_nll"), ("heldout", "stop_rate"), ("heldout", "role_leak_rate"),
                   ("heldout", "rougeL"), ("heldout", "bleu"), ("heldout", "embedding_similarity"),
                   ("heldout", "distinct_2"), ("heldout", "reply_length"), ("ifeval", "prompt_level"),
                   ("ifeval", "instruction_level"))) -> str:
    """A Markdown bullet list comparing a with b on each metric both have (empty if none)."""
    lines = []
    for set_, key in keys:
        c = compare(results, key, a, b, set_)
        if c is not None:
            lines.append(f"- {c.sentence()}")
    return "\n".join(lines)


def tally(results: Results, a: str = "sft", b: str = "base_chat", set: str = "heldout") -> dict:
    """Metrics with a better direction, sorted by how a compares with b.

    better / worse: the 95% intervals do not overlap; unclear: they overlap (or the values
    are equal); better_no_ci / worse_no_ci: corpus statistics without an interval.
    """
    specs = {"heldout": HELDOUT_METRICS, "ifeval": IFEVAL_METRICS, "loss": LOSS_METRICS}[set]
    out = {"better": [], "worse": [], "unclear": [], "better_no_ci": [], "worse_no_ci": []}
    for m in specs:
        c = compare(results, m.key, a, b, set)
        if c is None or not m.better:
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
            parts[k] += [m for m in t[k] if m != "held-out perplexity"]  # perplexity repeats the loss
    if not any(parts.values()):
        return f"No metric with a better direction was measured for both {label(a)} and {label(b)}."

    def names(xs):
        return ", ".join(xs) if xs else "none"

    text = (f"Comparing **{label(a)}** with **{label(b)}** on every metric that has a better direction: "
            f"{label(a)} is better, with non-overlapping 95% intervals, on {names(parts['better'])}; "
            f"worse, with non-overlapping intervals, on {names(parts['worse'])}; "
            f"and not separable at this sample size on {names(parts['unclear'])}.")
    if parts["better_no_ci"] or parts["worse_no_ci"]:
        text += (f" Among corpus statistics without an interval, it is better on {names(parts['better_no_ci'])} "
                 f"and worse on {names(parts['worse_no_ci'])}.")
    return text


def which_run_note(results: Results) -> str:
    """One Markdown paragraph: which run the book shows, on what hardware, and how long it took."""
    run, name = results.run, results.name
    hw = run.get("hardware") or {}
    training = run.get("training") or {}
    if name == "full":
        what = "the **full GPU-scale run** (`configs/full.yaml`)"
    elif name == "default":
        what = "the **small default CPU run** (`configs/default.yaml`)"
    else:
        what = f"the run **{name}** (`configs/{name}.yaml`)"
    if hw.get("gpu"):
        where = f"{hw.get('gpu_count', 1)} × {hw['gpu']}"
    else:
        cpu = f"{hw['processor']}, " if hw.get("processor") else ""
        where = f"a CPU only ({cpu}{hw.get('cpu_count', '?')} cores, no GPU)"
    text = (
        f"This book shows {what}: {fmt_count(training.get('train_conversations'))} training conversations, "
        f"{fmt_count(training.get('global_steps'))} optimizer steps, on {where}. "
        f"The whole run (data, training, and evaluation of every system) took {fmt_duration(run.get('wall_s'))}, "
        f"of which training took {fmt_duration(training.get('train_wall_s'))}."
    )
    if not hw.get("gpu") and name != "full":
        text += (" The same recipe at GPU scale is `configs/full.yaml`; when `results/full/` exists, "
                 "the book shows that run instead.")
    for entry in run.get("rescored") or []:
        if entry.get("changed"):
            keys = ", ".join(f"`{k}`" for k in sorted(entry["changed"]))
            text += (f" Its reply metrics were re-scored from the saved replies on {entry['at'][:10]} "
                     f"(`sftlab rescore`, commit {str(entry.get('git_commit'))[:7]}) after a metric changed; "
                     f"values that moved: {keys}.")
    if results.stale:
        text += (f" **Warning:** `configs/{name}.yaml` changed after this run; "
                 f"re-run `sftlab run configs/{name}.yaml` to bring the book up to date.")
    return text


def data_summary(results: Results) -> str:
    """Where the data went, as Markdown sentences with the report's counts."""
    r = results.data_report
    tl = r.get("token_lengths") or {}
    hist = r.get("turns_histogram") or {}
    multi = sum(v for k, v in hist.items() if int(k) > 1)
    text = (
        f"The loader read {fmt_count(r.get('n_read'))} records from `{r.get('source')}`; "
        f"{fmt_count(r.get('n_loaded'))} were valid conversations and "
        f"{fmt_count(sum((r.get('skipped') or {}).values()))} were skipped. "
        f"The filters kept {fmt_count(r.get('n_kept'))} of them, and the split drew "
        f"{fmt_count(r.get('n_eval'))} held-out and {fmt_count(r.get('n_train'))} training conversations "
        f"(seed {r.get('seed')}). "
    )
    if tl:
        text += (f"Kept conversations are {fmt_count(tl.get('min'))} to {fmt_count(tl.get('max'))} tokens long "
                 f"(median {tl.get('median'):,.0f}, 90th percentile {fmt_count(tl.get('p90'))}); ")
    if hist:
        n = sum(hist.values())
        text += f"{fmt_count(multi)} of {fmt_count(n)} ({100 * multi / max(1, n):.0f}%) have more than one reply."
    return text


def eval_setup_note(results: Results) -> str:
    """How the evaluation was run: prompt counts, decoding, token limit, resamples."""
    ev = results.config.get("evaluation") or {}
    n_held = len(samples(results, "heldout"))
    n_if = len(samples(results, "ifeval"))
    text = (f"Every system answered the same {fmt_count(n_held)} held-out prompts"
            + (f" and {fmt_count(n_if)} IFEval-style prompts" if n_if else "")
            + f", with greedy decoding and at most {ev.get('max_new_tokens', '?')} new tokens per reply. "
            f"Intervals are 95% percentile bootstrap intervals over prompts "
            f"({fmt_count(ev.get('bootstrap_resamples', 1000))} resamples).")
    return text


def loss_summary(results: Results, k: int | None = None) -> dict:
    """Mean training loss over the first and last k logged steps (k: a tenth of the log, at least 1)."""
    log = results.train_log
    if log.empty or "loss" not in log:
        return {}
    losses = log["loss"].dropna()
    k = k or max(1, len(losses) // 10)
    out = {"k": k, "first": float(losses.head(k).mean()), "last": float(losses.tail(k).mean()),
           "steps": int(log["step"].max())}
    if "eval_loss" in log:
        ev = log.dropna(subset=["eval_loss"])
        if len(ev):
            out["eval_first"], out["eval_last"] = float(ev["eval_loss"].iloc[0]), float(ev["eval_loss"].iloc[-1])
    return out


def loss_sentence(results: Results) -> str:
    """The training-loss trend in one sentence (first and last tenth of the log)."""
    s = loss_summary(results)
    if not s:
        return "This run logged no training loss."
    change = "fell" if s["last"] < s["first"] else ("rose" if s["last"] > s["first"] else "stayed")
    text = (f"The training loss {change} from {s['first']:.2f} (mean of the first {s['k']} logged steps) to "
            f"{s['last']:.2f} (mean of the last {s['k']}) over {s['steps']} optimizer steps.")
    if "eval_first" in s:
        text += f" The eval-split loss went from {s['eval_first']:.2f} to {s['eval_last']:.2f}."
    return text


def precision_note(results: Results, system: str = "sft") -> str:
    """How wide the intervals are at this evaluation size (what 'small sample' means here)."""
    n_held = len(samples(results, "heldout"))
    parts = [f"With {n_held} held-out prompts"]
    stop = metric_entry(results, system, "stop_rate")
    if stop and stop.get("ci"):
        lo, hi = stop["ci"]
        parts.append(f", {label(system)}'s stop-rate interval spans {100 * (hi - lo):.0f} percentage points "
                     f"({fmt_ci(stop, 'rate')})")
    rouge = metric_entry(results, system, "rougeL")
    if rouge and rouge.get("ci"):
        parts.append(f" and its ROUGE-L interval {rouge['ci'][1] - rouge['ci'][0]:.3f} "
                     f"({fmt_ci(rouge)})")
    return "".join(parts) + ": differences much smaller than these widths cannot be detected at this size."


def repetition_sentence(results: Results, set: str = "heldout", threshold: float = 0.5) -> str:
    """Share of replies per system that loop, in one sentence (see `repetition_table`)."""
    from ..metrics import distinct_n

    bits = []
    for s in results.systems:
        replies = [x["replies"][s]["text"] for x in samples(results, set) if s in x["replies"]]
        if replies:
            loops = sum(distinct_n([t], 2) < threshold for t in replies if t.split())
            bits.append(f"{label(s)} {loops} of {len(replies)}")
    if not bits:
        return ""
    return (f"Replies whose word pairs are mostly repeats (per-reply distinct-2 below {threshold:g}, a sign of a "
            f"greedy-decoding loop): " + "; ".join(bits) + ".")


def role_leak_sentence(results: Results) -> str:
    """How many replies of each system leak a role, over both prompt sets, as one sentence."""
    df = role_leak_table(results)
    parts = []
    for s in results.systems:
        n = sum(len([x for x in samples(results, set_) if s in x["replies"]]) for set_ in ("heldout", "ifeval"))
        if n:
            parts.append(f"{label(s)} {int((df['system'] == label(s)).sum())} of {n}")
    return ("Replies that write template markup or open a turn of their own, over both prompt sets: "
            + "; ".join(parts) + ".")
