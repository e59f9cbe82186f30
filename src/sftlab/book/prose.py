"""Sentences computed from a run's numbers: comparisons, verdicts and notes the chapters print.

No result is typed into the book's prose: where a chapter states a finding (the preface's
verdict, chapter 6's comparisons and analysis, chapter 5's loss trend, chapter 3's data
summary), the sentence is built here from `results/NAME/`, so it stays true when the run
changes. `compare` and `tally` decide direction and whether two systems' 95% intervals
overlap.
"""

from __future__ import annotations

import math
from pathlib import Path

from .catalog import label
from .formatting import fmt_ci, fmt_count, fmt_diff, fmt_duration, fmt_value
from .results import Results, metric_entry, samples
from .tables import role_leak_table
from .verdicts import compare


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
                 + ": a base model that repeats \"give it a title like `<<My Title>>`\" is not following it.")
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
    text = (f"{fmt_count(mix['n_replaced'])} of the {fmt_count(n_train)} training conversations "
            f"({100 * mix['n_replaced'] / max(1, n_train or 1):.0f}%, share {mix['share']} asked) were replaced by "
            f"instruction examples of {len(mix['per_type'])} types"
            + ("" if mix.get("extra") else ", so the run trains on no more conversations than without them")
            + f"; {fmt_count(sum((mix.get('skipped') or {}).values()))} rewrite attempts could not "
            "satisfy their instruction and were skipped, never emitted.")
    extra = mix.get("extra")
    if extra:
        text += (f" A further {fmt_count(extra['n_added'])} examples were added (`extra`, {fmt_count(extra['n_asked'])} "
                 f"asked), made from the {fmt_count(extra['n_pool'])} conversations the length filter rejected: the "
                 "first reply cut at a sentence end to a word or sentence limit, one other instruction applied, and "
                 f"both stated in the request ({len(extra['per_type'])} pairs); the run trains on "
                 f"{fmt_count((n_train or 0) + extra['n_added'])} conversations. "
                 f"{fmt_count(sum((extra.get('skipped') or {}).values()))} attempts were skipped (a code block or "
                 "table that a cut would break, a request too long to fit, an opening request already used).")
    if mix.get("binding_limits"):
        within = (mix.get("skipped") or {}).get("within_every_limit", 0)
        text += (" Word and sentence limits were drawn below each reply's own length (`binding_limits`), so "
                 f"every such example cuts its reply; {fmt_count(within)} replies already within every limit "
                 "were among the skips.")
    return text


def run_pointer(results: Results) -> str:
    """One line for a chapter: which run its numbers come from, pointing at the preface's full note
    (said once there, not repeated), and a warning if the recipe changed since the run."""
    text = (f"The numbers in this chapter come from the run `results/{results.name}/`, described in "
            "@sec-which-run.")
    if results.stale:
        text += (f" **Warning:** `configs/{results.name}.yaml` changed after this run; re-run "
                 f"`sftlab run configs/{results.name}.yaml` to bring the book up to date.")
    return text


