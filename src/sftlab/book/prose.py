"""Sentences computed from a run's numbers: comparisons, verdicts and notes the chapters print.

No result is typed into the book's prose: where a chapter states a finding (the preface's
verdict, chapter 6's comparisons and analysis, chapter 5's loss trend, chapter 3's data
summary), the sentence is built here from `results/NAME/`, so it stays true when the run
changes. `compare` and `tally` decide direction and whether two systems' 95% intervals
overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .catalog import METRIC_SETS, Metric, label, metric_spec
from .formatting import fmt_ci, fmt_count, fmt_diff, fmt_duration, fmt_value
from .results import Results, comparison, metric_entry, samples
from .tables import role_leak_table



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
            + f", with greedy decoding and at most {ev.get('max_new_tokens', '?')} new tokens per reply. ")
    if results.metrics.get("comparisons"):
        text += ("Rates (stop, role leak, canned replies, IFEval pass rates) carry 95% Wilson intervals "
                 "[@wilson1927probable], other metrics 95% percentile bootstrap intervals over prompts "
                 f"({fmt_count(ev.get('bootstrap_resamples', 1000))} resamples). Two systems are compared by "
                 "their paired difference: the prompts are resampled once and both systems' replies to them "
                 "are scored together, so the interval is for the difference itself.")
    else:
        text += (f"Intervals are 95% percentile bootstrap intervals over prompts "
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


def epoch_sentence(results: Results, k: int = 10) -> str:
    """What the epochs did: the mean training loss just before and after each epoch boundary, and the
    last steps' training loss against the held-out loss of the trained model (the generalisation gap)."""
    log = results.train_log
    if log.empty or "loss" not in log or "epoch" not in log:
        return ""
    log = log.dropna(subset=["loss"])
    n_epochs = int(math.ceil(float(log["epoch"].max()) - 1e-9))
    parts = []
    for e in range(1, n_epochs):
        before = log[log["epoch"] <= e]["loss"].tail(k)
        after = log[log["epoch"] > e]["loss"].head(k)
        if len(before) and len(after):
            step = int(log[log["epoch"] <= e]["step"].max())
            parts.append(f"At the end of epoch {e} (step {step}) the model starts to see the same conversations "
                         f"again: the mean loss of the {len(before)} steps before that point is "
                         f"{before.mean():.2f}, of the {len(after)} steps after it {after.mean():.2f}")
    last = log["loss"].tail(k).mean()
    text = "; ".join(parts) + ("." if parts else "")
    held = ((results.metrics.get("heldout_loss") or {}).get("sft") or {})
    if held.get("mean_nll") is not None:
        gap = held["mean_nll"] - last
        text += (f" The last {k} steps average {last:.2f} nats per learned token on training conversations, "
                 f"against {held['mean_nll']:.2f} on held-out ones: a gap of {gap:.2f} nats. ")
        if n_epochs > 1 and gap > 0:
            text += ("A model that has seen each training conversation before predicts it better than a new "
                     "one; part of the second epoch's gain is memorising those conversations rather than "
                     "learning something that carries over. The held-out loss, not the training loss, is the "
                     "number to judge the run by.")
    return text.strip()


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


def loss_split_sentence(results: Results, a: str = "sft", b: str = "base_chat") -> str:
    """What the held-out loss gain is made of: the replies' own text against the end-of-turn tokens."""
    from ..scoring import eot_share_of_gain

    loss = results.metrics.get("heldout_loss") or {}
    la, lb = loss.get(a) or {}, loss.get(b) or {}
    if "eot_nll" not in la or "eot_nll" not in lb:
        return ("This run did not record the loss of the end-of-turn tokens separately "
                "(`sftlab rescore DIR --model` adds it).")
    n_eot, n_all = la["eot_nll"]["n_tokens"], la["n_tokens"]
    share = eot_share_of_gain(loss, a, b)
    content = compare(results, "content_nll", a, b, "loss")
    text = (f"The {fmt_count(n_eot)} end-of-turn tokens are {100 * n_eot / n_all:.1f}% of the "
            f"{fmt_count(n_all)} scored tokens, yet they carry {100 * share:.0f}% of the loss reduction "
            f"(in nats summed over all tokens): {label(b)} finds each of them very unlikely "
            f"({lb['eot_nll']['value']:.1f} nats, a probability of about {math.exp(-lb['eot_nll']['value']):.0e}), "
            f"{label(a)} expects them ({la['eot_nll']['value']:.1f} nats). ")
    if content is not None:
        text += (f"On the replies' own text the loss goes from {lb['content_nll']['value']:.2f} to "
                 f"{la['content_nll']['value']:.2f} nats per token (paired difference "
                 f"{fmt_diff(content.paired, 'nats')}): ")
        text += ("a real but much smaller gain in predicting what a reply says." if content.separated and
                 content.a_better else "this evaluation cannot tell the two apart on the reply text itself.")
    return text


def category_sentence(results: Results, system: str = "sft", set: str = "heldout") -> str:
    """How one system's replies split into categories, in one sentence."""
    counts = ((results.metrics.get("systems", {}).get(system) or {}).get(set) or {}).get("categories")
    if not counts:
        return f"This run has no reply categories for {label(system)}."
    n = sum(counts.values())
    named = {"answer": ("attempts an answer", "attempt an answer"), "deflection": ("deflects", "deflect"),
             "greeting": ("only greets or offers help", "only greet or offer help"), "loop": ("loops", "loop"),
             "echo": ("copies the prompt", "copy the prompt"), "cut": ("runs into the token limit",
                                                                       "run into the token limit"),
             "empty": ("is empty", "are empty")}
    parts = [f"{counts[c]} {named[c][counts[c] != 1]}" for c in sorted(counts, key=lambda c: -counts[c]) if counts[c]]
    prompts = "held-out" if set == "heldout" else "IFEval-style"
    return f"Of {label(system)}'s {n} replies to the {prompts} prompts, " + ", ".join(parts) + "."


def ifeval_sentence(results: Results) -> str:
    """The IFEval-style result as the book reads it: echo-proof scores, what copying did to the raw ones."""
    bits, moved = [], []
    for s in results.systems:
        ifv = (results.metrics["systems"][s].get("ifeval")) or {}
        if "prompt_level" not in ifv:
            continue
        bits.append(f"{label(s)} {fmt_ci(ifv['prompt_level'], 'rate')}")
        raw = (ifv.get("raw") or {}).get("prompt_level")
        if raw and abs(raw["value"] - ifv["prompt_level"]["value"]) > 1e-12:
            moved.append(f"{label(s)} from {fmt_value(raw['value'], 'rate')} "
                         f"({fmt_count(ifv.get('n_echoed'))} of {fmt_count(ifv.get('n_prompts'))} replies copy "
                         f"their prompt)")
    if not bits:
        return "This run did not evaluate the IFEval-style prompts."
    text = "Prompt-level accuracy, counting only what each reply wrote itself: " + "; ".join(bits) + "."
    if moved:
        text += (" Giving credit to copied prompt text would have raised " + "; ".join(moved)
                 + ": a base model that repeats \"give it a title like <<My Title>>\" is not following it.")
    c = compare(results, "prompt_level", "sft", "base_chat", "ifeval")
    if c is not None and c.paired is not None:
        text += f" {c.sentence()}"
    return text


def published_note(results: Results) -> str:
    """Published IFEval scores of related models (src/sftlab/prompts/published.yaml), with the caveat."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "prompts" / "published.yaml"
    entries = yaml.safe_load(path.read_text())
    ours = {s: metric_entry(results, s, "prompt_level", "ifeval") for s in results.systems}
    lines = []
    for e in entries:
        line = f"- **{e['model']}**: {e['benchmark']} {e['value']:.1f}% ({e['measure']}) [@{e['source']}]"
        mine = ours.get(e.get("system") or "")
        if mine:
            line += f"; on this project's prompts, {label(e['system'])} scores {fmt_ci(mine, 'rate')} prompt-level"
        lines.append(line + ".")
    n_prompts = len(samples(results, "ifeval"))
    n_types = len({c["type"] for s in samples(results, "ifeval") for c in s.get("checks") or []})
    limit = (results.config.get("evaluation") or {}).get("max_new_tokens", "?")
    # IFEval's size is the paper's (Zhou et al. 2023); this project's numbers come from the run.
    return ("\n".join(lines) + "\n\nThese are not comparable one to one with this chapter's numbers: the real "
            "IFEval has 541 prompts and 25 instruction types [@zhou2023ifeval] and was run on the original "
            f"weights, while this project uses its own {n_prompts} prompts with {n_types} check types, 4-bit "
            f"weights, greedy decoding and a {limit}-token limit. They place the systems on a familiar scale, "
            "no more.")


def canned_note(results: Results, system: str = "sft") -> str:
    """How much of a system's stop rate is canned replies: a reply that deflects or greets also stops."""
    entry = metric_entry(results, system, "stop_rate")
    counts = ((results.metrics.get("systems", {}).get(system) or {}).get("heldout") or {}).get("categories")
    if not entry or not counts:
        return ""
    n = sum(counts.values())
    canned = counts.get("deflection", 0) + counts.get("greeting", 0)
    stopped = round(entry["value"] * n)
    return (f"{label(system)} stopped by itself in {stopped} of {n} held-out replies, but {canned} of its "
            f"replies are canned (deflections or bare greetings), which end early by nature: counting only "
            f"replies that attempt an answer, {counts.get('answer', 0)} of {n} did so and stopped.")


CLEANING_REASONS = {
    "prompt_too_short": "opening requests too short to answer without context",
    "prompt_needs_context": "opening requests that continue a conversation which is not there",
    "duplicate_prompt": "repeats of an earlier conversation's opening request",
    "duplicate_conversation": "exact repeats of an earlier conversation",
}


def cleaning_note(results: Results) -> str:
    """What the cleaning filters removed (short or context-bound prompts, duplicates), or that the run
    did not use them, with the consequence for the held-out set."""
    r = results.data_report
    f, rejected = r.get("filters") or {}, r.get("rejected") or {}
    used = [k for k in ("min_prompt_words", "drop_context_prompts", "dedupe", "strict_english") if f.get(k)]
    if not used:
        return ("This run did not deduplicate opening requests or drop context-bound ones (`data.dedupe`, "
                "`data.min_prompt_words`, `data.drop_context_prompts`): some held-out prompts may also open "
                "training conversations, and some are fragments such as a single word.")
    parts = [f"{fmt_count(rejected[k])} {v}" for k, v in CLEANING_REASONS.items() if rejected.get(k)]
    text = ("Before the split, the cleaning filters removed " + (", ".join(parts) if parts else "nothing") + ".")
    if f.get("dedupe"):
        text += (" Because duplicates go before the split, no held-out conversation opens with the same "
                 "request (compared in lowercase, punctuation ignored) as a training conversation.")
    if f.get("strict_english"):
        text += " Every user turn must also be written mostly in Latin letters (`strict_english`)."
    return text


def instruction_mix_note(results: Results) -> str:
    """How many training conversations became verifiable-instruction examples, of how many types."""
    mix = results.data_report.get("instructions") or {}
    if not mix:
        return ""
    n_train = results.data_report.get("n_train")
    return (f"{fmt_count(mix['n_replaced'])} of the {fmt_count(n_train)} training conversations "
            f"({100 * mix['n_replaced'] / max(1, n_train or 1):.0f}%, share {mix['share']} asked) were replaced by "
            f"instruction examples of {len(mix['per_type'])} types, so the run trains on no more conversations "
            f"than without them; {fmt_count(sum((mix.get('skipped') or {}).values()))} rewrite attempts could not "
            "satisfy their instruction and were skipped, never emitted.")


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


def run_pointer(results: Results) -> str:
    """One line for a chapter: which run its numbers come from, pointing at the preface's full note
    (said once there, not repeated), and a warning if the recipe changed since the run."""
    text = (f"The numbers in this chapter come from the run `results/{results.name}/`, described in "
            "@sec-which-run.")
    if results.stale:
        text += (f" **Warning:** `configs/{results.name}.yaml` changed after this run; re-run "
                 f"`sftlab run configs/{results.name}.yaml` to bring the book up to date.")
    return text


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
