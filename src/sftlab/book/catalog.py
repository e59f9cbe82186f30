"""The systems and metrics the book compares: their names, colours, formats and meanings.

Every table, chart and sentence of chapters 6 (evaluation), 5 (training) and the preface
names a system or a metric through this catalogue, so a reader learns the four systems'
labels and colours once, and each metric says which direction is better and what it
measures (the metric glossary of @sec-eval-metrics is printed from here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd



SYSTEMS = ("base_continuation", "base_chat", "sft", "sft_continuation", "reference")  # the book's order, everywhere


SYSTEM_LABELS = {
    "base_continuation": "base (plain text)",
    "base_chat": "base + template",
    "sft": "LoRA SFT",
    "sft_continuation": "LoRA SFT (plain text)",
    "reference": "SmolLM2-135M-Instruct",
    "preference": "SFT + preference stage",  # sftlab.preference: DPO or rejection sampling on the SFT model
}


SYSTEM_DESCRIPTIONS = {
    "base_continuation": "the base model ({base}) reading the prompt as plain text, no chat template",
    "base_chat": "the base model with the chat template, before training (what SFT starts from)",
    "sft": "the base model with the chat template and the trained LoRA adapter",
    "sft_continuation": "the trained model reading the prompt as plain text, no chat template: what the "
                        "template does for it",
    "reference": "a published post-trained model ({reference}), with its own chat template",
}


SYSTEM_COLORS = {
    "base_continuation": "#8c8c8c",  # grey: the model as pretrained
    "base_chat": "#e69f00",  # orange: same weights, chat template
    "sft": "#0072b2",  # blue: after LoRA SFT
    "sft_continuation": "#56b4e9",  # light blue: after LoRA SFT, without the template
    "reference": "#009e73",  # green: a published post-trained model
    "preference": "#cc79a7",  # purple: the SFT model after the preference stage
}


@dataclass(frozen=True)
class Metric:
    """How the book names, formats and reads one metric."""

    key: str
    label: str
    kind: str  # rate | score | length | nats | ppl (see fmt_value)
    better: str  # "higher", "lower" or "" (neither: depends on the prompt)
    meaning: str


HELDOUT_METRICS = [
    Metric("stop_rate", "stop rate", "rate", "higher",
           "share of replies that ended with the end-of-turn token before the token limit"),
    Metric("role_leak_rate", "role-leak rate", "rate", "lower",
           "share of replies that write template markup or start the user's next turn themselves"),
    Metric("rougeL", "ROUGE-L", "score", "higher",
           "longest common word subsequence with the ShareGPT reference reply, F-measure [@lin2004rouge]"),
    Metric("bleu", "BLEU", "score", "higher",
           "corpus BLEU-4: n-gram precision against the reference, with a brevity penalty [@papineni2002bleu]"),
    Metric("embedding_similarity", "embedding similarity", "score", "higher",
           "cosine similarity of all-MiniLM-L6-v2 sentence embeddings of reply and reference "
           "[@reimers2019sbert]: meaning, not exact words"),
    Metric("distinct_1", "distinct-1", "score", "higher",
           "distinct words over all words across replies: low means repetitive [@li2016diversity]"),
    Metric("distinct_2", "distinct-2", "score", "higher",
           "distinct word pairs over all word pairs across replies [@li2016diversity]; longer replies repeat "
           "more pairs, so it also measures length"),
    Metric("distinct_2_matched", "distinct-2 (first 30 words)", "score", "higher",
           "distinct word pairs within each reply's first 30 words, averaged over replies at least that long: "
           "diversity at a matched length"),
    Metric("canned_rate", "canned replies", "rate", "lower",
           "share of replies that only deflect (\"I'm not sure what you mean\") or greet (\"How can I help you "
           "today?\") instead of answering; see the reply categories"),
    Metric("reply_length", "reply length (words)", "length", "",
           "mean words per reply; neither higher nor lower is better in itself"),
]


IFEVAL_METRICS = [
    Metric("prompt_level", "IFEval prompt-level accuracy", "rate", "higher",
           "share of prompts whose every instruction is followed [@zhou2023ifeval], by the reply's own text: "
           "text copied from the prompt earns nothing"),
    Metric("instruction_level", "IFEval instruction-level accuracy", "rate", "higher",
           "share of all individual instructions followed [@zhou2023ifeval], copied text earning nothing"),
    Metric("canned_rate", "canned replies (IFEval prompts)", "rate", "lower",
           "share of IFEval replies that only deflect or greet"),
    Metric("stop_rate", "stop rate (IFEval prompts)", "rate", "higher",
           "share of IFEval replies that ended before the token limit"),
]


LOSS_METRICS = [
    Metric("mean_nll", "held-out loss (nats/token)", "nats", "lower",
           "mean negative log-likelihood of the reference replies' tokens (and their end-of-turn) given the "
           "conversation so far"),
    Metric("perplexity", "held-out perplexity", "ppl", "lower",
           "exp(held-out loss): the effective number of equally likely next tokens"),
    Metric("content_nll", "held-out loss, reply text (nats/token)", "nats", "lower",
           "the held-out loss over the reply's own tokens only, without the end-of-turn token that closes it"),
    Metric("eot_nll", "held-out loss, end-of-turn (nats/token)", "nats", "lower",
           "the held-out loss of the end-of-turn token alone: how surprised the model is that the reply ends there"),
]


MULTITURN_METRICS = [
    Metric("prompt_level", "multi-turn recall", "rate", "higher",
           "share of multi-turn probes whose last reply uses the fact stated in an earlier turn, in a usable reply "
           "(its own words: copied text, loops and echoes earn nothing)"),
    Metric("stop_rate", "stop rate (multi-turn probes)", "rate", "higher",
           "share of multi-turn replies that ended before the token limit"),
]


PLAIN_TEXT_METRICS = [
    Metric("mean_nll", "plain-text loss (nats/token)", "nats", "lower",
           "mean negative log-likelihood of passages of plain prose (Python's reference pages, no chat template): "
           "higher after training than before is what training forgot"),
]


QA_METRICS = [
    Metric("accuracy", "question accuracy", "rate", "higher",
           "share of the questions with checkable answers whose reply contains a right answer and no listed "
           "wrong one (sftlab.qa)"),
    Metric("stop_rate", "stop rate (questions)", "rate", "higher", "share of question replies that ended"),
]


OOD_METRICS = [
    Metric("prompt_level", "untrained-instruction accuracy", "rate", "higher",
           "share of the prompts with instruction types absent from training whose every instruction is followed"),
    Metric("stop_rate", "stop rate (untrained instructions)", "rate", "higher",
           "share of those replies that ended"),
]


METRIC_SETS = {"heldout": HELDOUT_METRICS, "qa": QA_METRICS, "ood": OOD_METRICS, "ifeval": IFEVAL_METRICS, "multiturn": MULTITURN_METRICS,
               "loss": LOSS_METRICS, "plain_text": PLAIN_TEXT_METRICS}
SET_LABELS = {"loss": "held-out loss", "heldout": "held-out", "ifeval": "IFEval", "multiturn": "multi-turn",
              "plain_text": "plain text", "qa": "questions", "ood": "untrained instructions"}


METRICS = {m.key: m for m in HELDOUT_METRICS}


_ALL_METRICS = {**{m.key: m for m in IFEVAL_METRICS}, **{m.key: m for m in LOSS_METRICS}, **METRICS}


def metric_spec(key: str, set: str = "heldout") -> Metric:
    """How the book names and reads metric `key` of prompt set `set` ("heldout", "ifeval", "multiturn", "loss")."""
    specs = METRIC_SETS[set]
    for m in specs:
        if m.key == key:
            return m
    return _ALL_METRICS.get(key, Metric(key, key, "score", "", ""))


def label(system: str) -> str:
    """The readable name of a system: "sft" -> "LoRA SFT"."""
    return SYSTEM_LABELS.get(system, system)


def metric_glossary(set: str = "heldout") -> pd.DataFrame:
    """One line per metric: what it measures and which direction is better."""
    specs = METRIC_SETS[set]
    return pd.DataFrame(
        [{"metric": m.label, "better": m.better or "neither", "what it measures": _strip_cites(m.meaning)}
         for m in specs]
    ).set_index("metric")


def glossary_markdown(set: str = "heldout") -> str:
    """The metrics of a set as a Markdown list, with citations (Quarto resolves them)."""
    specs = METRIC_SETS[set]
    return "\n".join(f"- **{m.label}** ({m.better + ' is better' if m.better else 'neither direction is better'}): "
                     f"{m.meaning}." for m in specs)


def _strip_cites(text: str) -> str:
    return re.sub(r"\s*\[@[^\]]+\]", "", text)
