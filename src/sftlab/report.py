"""Read a results folder and turn it into what the book shows: tables, sentences, comparison cards.

The chapters never compute a result: they load `results/NAME/` (written by `sftlab run`)
with `load_results` and display what the functions here build from it. Every number in
the book's prose is printed by code from these files, so the text stays true when the
run changes. Tables are pandas DataFrames of display strings ("0.175 [0.126, 0.216]":
value and 95% bootstrap interval); `show_table` displays one as HTML for the site and as
Markdown for the PDF.
"""

from __future__ import annotations

import html as _html
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
import pandas as pd
import yaml

from .errors import SftlabError

SYSTEMS = ("base_continuation", "base_chat", "sft", "reference")  # the book's order, everywhere
SYSTEM_LABELS = {
    "base_continuation": "base (plain text)",
    "base_chat": "base + template",
    "sft": "LoRA SFT",
    "reference": "SmolLM2-135M-Instruct",
}
SYSTEM_DESCRIPTIONS = {
    "base_continuation": "the base model ({base}) reading the prompt as plain text, no chat template",
    "base_chat": "the base model with the chat template, before training (what SFT starts from)",
    "sft": "the base model with the chat template and the trained LoRA adapter",
    "reference": "a published post-trained model ({reference}), with its own chat template",
}

RESULTS_ENV = "SFTLAB_RESULTS"  # a results folder (path or name) to show instead of the default choice


class ResultsMissingError(SftlabError, FileNotFoundError):
    """The results folder the book needs does not exist (yet)."""


class StaleResultsWarning(UserWarning):
    """The recipe changed after the results were produced: the book shows an older run."""


# --------------------------------------------------------------------------- finding and loading


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) holding pyproject.toml.

    Quarto runs each chapter from `chapters/`, a notebook may run from `notebooks/`:
    both find the same root.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise ResultsMissingError(f"no pyproject.toml at or above {here}: run this from inside the sftlab project")


def results_dir(name: str | None = None, root: str | Path | None = None) -> Path:
    """The results folder to show: `results/NAME` if named, else `$SFTLAB_RESULTS`, else
    `results/full` (the GPU run) when present, else `results/default`.

    Raises `ResultsMissingError` naming the command that produces the folder.
    """
    root = Path(root) if root is not None else project_root()
    if name is None and os.environ.get(RESULTS_ENV):
        name = os.environ[RESULTS_ENV]
    if name is None:
        path = root / "results" / "full"
        if not (path / "run.json").is_file():
            path = root / "results" / "default"
    else:
        candidate = Path(name)
        path = candidate if (candidate.is_absolute() or len(candidate.parts) > 1) else root / "results" / name
        path = path if path.is_absolute() else root / path
    if not (path / "run.json").is_file():
        stem = path.name
        how = ("`make all` (or `sftlab run configs/default.yaml`)" if stem == "default"
               else f"`sftlab run configs/{stem}.yaml`")
        raise ResultsMissingError(
            f"no results in {path}: the book shows the files a run writes there. "
            f"Produce them with {how}, or point {RESULTS_ENV} at an existing results folder."
        )
    return path


@dataclass
class Results:
    """Everything one `sftlab run` wrote (see `sftlab.experiment`), loaded."""

    name: str
    path: Path
    config: dict
    run: dict
    metrics: dict = field(default_factory=dict)
    data_report: dict = field(default_factory=dict)
    train_log: pd.DataFrame = field(default_factory=pd.DataFrame)
    samples: list = field(default_factory=list)
    lora_norms: pd.DataFrame = field(default_factory=pd.DataFrame)
    stale: bool | None = None  # True: the recipe changed since the run; None: no recipe to compare

    @property
    def systems(self) -> list[str]:
        """Evaluated systems, in the book's order (a run may leave some out)."""
        present = (self.metrics or {}).get("systems", {})
        return [s for s in SYSTEMS if s in present] + [s for s in present if s not in SYSTEMS]

    @property
    def has_ifeval(self) -> bool:
        return any("ifeval" in v for v in (self.metrics or {}).get("systems", {}).values())

    @property
    def on_gpu(self) -> bool:
        return bool((self.run.get("hardware") or {}).get("gpu"))


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_results(name: str | None = None, root: str | Path | None = None, *, check: bool = True) -> Results:
    """Load a results folder (see `results_dir` for which); warn if its recipe changed since."""
    root = Path(root) if root is not None else project_root()
    path = results_dir(name, root)
    run = _read_json(path / "run.json", {})
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    results = Results(
        name=run.get("name") or config.get("name") or path.name,
        path=path,
        config=config or {},
        run=run,
        metrics=_read_json(path / "metrics.json", {}),
        data_report=_read_json(path / "data_report.json", {}),
        train_log=pd.DataFrame(_read_jsonl(path / "train_log.jsonl")),
        samples=_read_jsonl(path / "samples.jsonl"),
        lora_norms=pd.DataFrame(_read_jsonl(path / "lora_norms.jsonl")),
    )
    if check:
        results.stale = check_staleness(results, root=root)
    return results


def recipe_path(results: Results, root: str | Path | None = None) -> Path | None:
    """The recipe this run came from: configs/NAME.yaml, else the path run.json recorded."""
    root = Path(root) if root is not None else project_root()
    for candidate in (root / "configs" / f"{results.name}.yaml", results.run.get("config_path")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def check_staleness(results: Results, root: str | Path | None = None) -> bool | None:
    """Compare run.json's config hash with the recipe's current hash; warn when they differ.

    Returns True (stale, warned), False (up to date) or None (no recipe or hash to compare).
    """
    from .config import config_hash, load_config

    recorded = results.run.get("config_hash")
    root = Path(root) if root is not None else project_root()
    path = recipe_path(results, root)
    if not recorded or path is None:
        return None
    try:
        current = config_hash(load_config(path))
    except SftlabError as exc:
        warnings.warn(f"could not read {path} to check whether results/{results.name} is current: {exc}",
                      StaleResultsWarning, stacklevel=3)
        return None
    if current == recorded:
        return False
    warnings.warn(
        f"{_rel(path, root)} changed since results/{results.name} was produced (config hash {recorded} in run.json, "
        f"{current} now): the book shows the older run. Re-run it with `sftlab run {_rel(path, root)}` "
        f"(or `make all` after deleting results/{results.name}/).",
        StaleResultsWarning, stacklevel=3,
    )
    return True


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- formatting


def fmt_duration(seconds: float | None) -> str:
    """42 -> "42 s"; 754 -> "12.6 min"; 7300 -> "2.0 h"."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_count(n) -> str:
    """1234567 -> "1,234,567"; 3.8e6 params read better as "3.80 M" (see fmt_params)."""
    return "n/a" if n is None else f"{int(n):,}"


def fmt_params(n) -> str:
    """3797632 -> "3.80 M"; 271895808 -> "271.9 M"."""
    if n is None:
        return "n/a"
    n = float(n)
    return f"{n / 1e6:.2f} M" if n < 1e7 else f"{n / 1e6:.1f} M"


def fmt_value(value, kind: str = "score") -> str:
    """One number as the book prints it. kind: rate (as %), score (3 decimals), nats, length, ppl."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a" if value is None else str(value)
    if kind == "rate":
        return f"{100 * value:.0f}%"
    if kind == "length":
        return f"{value:.1f}"
    if kind in ("nats", "ppl"):
        return f"{value:.2f}" if kind == "ppl" or abs(value) >= 0.1 else f"{value:.3f}"
    return f"{value:.3f}"


def fmt_ci(entry: dict | None, kind: str = "score") -> str:
    """{"value": 0.175, "ci": [0.126, 0.216]} -> "0.175 [0.126, 0.216]"; no interval -> "0.175"."""
    if not entry or entry.get("value") is None:
        return "–"
    text = fmt_value(entry["value"], kind)
    ci = entry.get("ci")
    if ci:
        text += f" [{fmt_value(ci[0], kind)}, {fmt_value(ci[1], kind)}]"
    return text


def _md_escape(text: str) -> str:
    """Text for a Markdown table cell: no raw HTML, no emphasis, no column breaks, no math."""
    text = str(text).replace("\n", " ")
    return re.sub(r"([\\`*_\[\]<>|$#~^])", r"\\\1", text)


def md_code(text: str) -> str:
    """Text as a Markdown code span (newlines shown as ↵), safe whatever backticks it holds."""
    text = str(text).replace("\n", "↵")
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(df: pd.DataFrame, index: bool = True) -> str:
    """A pipe table of `df` (cells escaped), which Pandoc renders in HTML and LaTeX alike."""
    frame = df.reset_index() if index and (df.index.name or not isinstance(df.index, pd.RangeIndex)) else df
    head = [_md_escape(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape("" if v is None else v) for v in row) + " |")
    return "\n".join(lines)


def show_table(df: pd.DataFrame, index: bool = True) -> None:
    """Display a table: HTML for the site and notebooks, a Markdown pipe table for the PDF."""
    from IPython.display import display

    html = df.to_html(index=index, escape=True, border=0, classes="table table-sm", na_rep="–")
    display({"text/html": html, "text/markdown": markdown_table(df, index=index),
             "text/plain": df.to_string(index=index)}, raw=True)


def show_markdown(text: str) -> None:
    """Display generated Markdown (a sentence with numbers in it) in every output format."""
    from IPython.display import Markdown, display

    display(Markdown(text))


# --------------------------------------------------------------------------- metrics


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
           "distinct word pairs over all word pairs across replies [@li2016diversity]"),
    Metric("reply_length", "reply length (words)", "length", "",
           "mean words per reply; neither higher nor lower is better in itself"),
]
IFEVAL_METRICS = [
    Metric("prompt_level", "IFEval prompt-level accuracy", "rate", "higher",
           "share of prompts whose every instruction is followed [@zhou2023ifeval]"),
    Metric("instruction_level", "IFEval instruction-level accuracy", "rate", "higher",
           "share of all individual instructions followed [@zhou2023ifeval]"),
    Metric("stop_rate", "stop rate (IFEval prompts)", "rate", "higher",
           "share of IFEval replies that ended before the token limit"),
]
LOSS_METRICS = [
    Metric("mean_nll", "held-out loss (nats/token)", "nats", "lower",
           "mean negative log-likelihood of the reference replies' tokens (and their end-of-turn) given the "
           "conversation so far"),
    Metric("perplexity", "held-out perplexity", "ppl", "lower",
           "exp(held-out loss): the effective number of equally likely next tokens"),
]
METRICS = {m.key: m for m in HELDOUT_METRICS}
_ALL_METRICS = {**{m.key: m for m in IFEVAL_METRICS}, **{m.key: m for m in LOSS_METRICS}, **METRICS}


def label(system: str) -> str:
    """The readable name of a system: "sft" -> "LoRA SFT"."""
    return SYSTEM_LABELS.get(system, system)


def metric_entry(results: Results, system: str, metric: str, set: str = "heldout") -> dict | None:
    """{"value", "ci"} of one metric, or None where the run did not measure it.

    set: "heldout", "ifeval" or "loss" (held-out loss, for base_chat and sft only).
    """
    if set == "loss":
        loss = (results.metrics.get("heldout_loss") or {}).get(system)
        if not loss:
            return None
        if metric == "perplexity":
            ci = loss.get("ci")
            return {"value": loss.get("perplexity"), "ci": [math.exp(c) for c in ci] if ci else None}
        return {"value": loss.get(metric), "ci": loss.get("ci") if metric == "mean_nll" else None}
    entry = (results.metrics.get("systems", {}).get(system) or {}).get(set) or {}
    value = entry.get(metric)
    if value is None:
        return None
    if isinstance(value, dict):
        return value
    if metric == "stop_rate":  # metrics.json has the IFEval stop rate without an interval
        return {"value": value, "ci": _stop_ci(results, system, set)}
    return {"value": value, "ci": None}


def _stop_ci(results: Results, system: str, set: str) -> list[float] | None:
    """95% bootstrap interval of a stop rate, from the stop flags in samples.jsonl."""
    from .metrics import bootstrap_ci

    flags = [float(bool(s["replies"][system].get("stopped"))) for s in results.samples
             if s.get("set") == set and system in s.get("replies", {})]
    if not flags:
        return None
    ev = results.config.get("evaluation") or {}
    lo, hi = bootstrap_ci(flags, n_resamples=int(ev.get("bootstrap_resamples") or 1000),
                          seed=int(results.config.get("seed") or 0))
    return [lo, hi]


def metric_glossary(set: str = "heldout") -> pd.DataFrame:
    """One line per metric: what it measures and which direction is better."""
    specs = {"heldout": HELDOUT_METRICS, "ifeval": IFEVAL_METRICS, "loss": LOSS_METRICS}[set]
    return pd.DataFrame(
        [{"metric": m.label, "better": m.better or "neither", "what it measures": _strip_cites(m.meaning)}
         for m in specs]
    ).set_index("metric")


def glossary_markdown(set: str = "heldout") -> str:
    """The metrics of a set as a Markdown list, with citations (Quarto resolves them)."""
    specs = {"heldout": HELDOUT_METRICS, "ifeval": IFEVAL_METRICS, "loss": LOSS_METRICS}[set]
    return "\n".join(f"- **{m.label}** ({m.better + ' is better' if m.better else 'neither direction is better'}): "
                     f"{m.meaning}." for m in specs)


def _strip_cites(text: str) -> str:
    return re.sub(r"\s*\[@[^\]]+\]", "", text)


def metrics_table(results: Results, set: str = "heldout", systems=None) -> pd.DataFrame:
    """Rows = metrics, columns = systems, cells "value [lo, hi]" (95% bootstrap interval).

    set: "heldout" (replies to held-out ShareGPT prompts), "ifeval" or "loss".
    Systems the run did not evaluate are left out; metrics none of them has are dropped.
    """
    specs = {"heldout": HELDOUT_METRICS, "ifeval": IFEVAL_METRICS, "loss": LOSS_METRICS}[set]
    if systems is None:
        systems = (list((results.metrics.get("heldout_loss") or {})) if set == "loss" else results.systems)
        systems = [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]
    rows = {}
    for m in specs:
        cells = {label(s): fmt_ci(metric_entry(results, s, m.key, set), m.kind) for s in systems}
        if any(c != "–" for c in cells.values()):
            rows[m.label + (f" ({m.better} is better)" if m.better else "")] = cells
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[label(s) for s in systems])
    df.index.name = "metric"
    return df


def loss_table(results: Results) -> pd.DataFrame:
    """Held-out assistant-token loss before (base + template) and after (LoRA SFT) training."""
    rows = {}
    for system, loss in (results.metrics.get("heldout_loss") or {}).items():
        rows[label(system)] = {
            "loss, nats/token [95% CI]": fmt_ci({"value": loss.get("mean_nll"), "ci": loss.get("ci")}, "nats"),
            "perplexity [95% CI]": fmt_ci(metric_entry(results, system, "perplexity", "loss"), "ppl"),
            "conversations": fmt_count(loss.get("n_conversations")),
            "scored tokens": fmt_count(loss.get("n_tokens")),
        }
    order = [label(s) for s in SYSTEMS]
    df = pd.DataFrame.from_dict(rows, orient="index")
    df = df.loc[sorted(df.index, key=lambda x: order.index(x) if x in order else 99)] if len(df) else df
    df.index.name = "system"
    return df


def ifeval_table(results: Results) -> pd.DataFrame:
    """IFEval pass rates: both overall accuracies, then one row per instruction type (with its count)."""
    systems = [s for s in results.systems if metric_entry(results, s, "prompt_level", "ifeval")]
    if not systems:
        return pd.DataFrame(columns=["instruction type", "n"]).set_index("instruction type")
    rows = {}
    first = results.metrics["systems"][systems[0]]["ifeval"]
    rows["all prompts (prompt-level)"] = {"n": fmt_count(first.get("n_prompts"))}
    rows["all instructions (instruction-level)"] = {"n": fmt_count(first.get("n_instructions"))}
    for s in systems:
        rows["all prompts (prompt-level)"][label(s)] = fmt_ci(metric_entry(results, s, "prompt_level", "ifeval"),
                                                              "rate")
        rows["all instructions (instruction-level)"][label(s)] = fmt_ci(
            metric_entry(results, s, "instruction_level", "ifeval"), "rate")
    types = sorted({t for s in systems for t in results.metrics["systems"][s]["ifeval"].get("per_type", {})})
    for t in types:
        row = {}
        for s in systems:
            entry = results.metrics["systems"][s]["ifeval"].get("per_type", {}).get(t)
            row["n"] = fmt_count(entry["n"]) if entry else row.get("n", "–")
            row[label(s)] = fmt_ci(entry, "rate")
        rows[t] = row
    df = pd.DataFrame.from_dict(rows, orient="index", columns=["n"] + [label(s) for s in systems])
    df.index.name = "instruction type"
    return df


def headline_table(results: Results) -> pd.DataFrame:
    """The few numbers of the preface: before/after on loss, stopping, overlap and IFEval."""
    picks = [("loss", "mean_nll"), ("heldout", "stop_rate"), ("heldout", "role_leak_rate"),
             ("heldout", "rougeL"), ("heldout", "embedding_similarity"), ("ifeval", "prompt_level")]
    systems = results.systems or list((results.metrics.get("heldout_loss") or {}))
    systems = [s for s in SYSTEMS if s in set(systems) | set(results.metrics.get("heldout_loss") or {})]
    rows = {}
    for set_, key in picks:
        m = _ALL_METRICS[key]
        cells = {label(s): fmt_ci(metric_entry(results, s, key, set_), m.kind) for s in systems}
        if any(c != "–" for c in cells.values()):
            rows[m.label + (f" ({m.better} is better)" if m.better else "")] = cells
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[label(s) for s in systems])
    df.index.name = "metric"
    return df


# --------------------------------------------------------------------------- comparisons in words


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


# --------------------------------------------------------------------------- run and training


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


# One-line meanings of the recipe fields the configs use; other fields fall back to the
# libraries' own help text (PEFT and TRL document every dataclass field).
FIELD_MEANINGS = {
    ("lora", "r"): "rank of each low-rank update B·A: the adapter's capacity",
    ("lora", "lora_alpha"): "scale of the update: ΔW = (lora_alpha / r) · B·A",
    ("lora", "lora_dropout"): "dropout on the adapter's input during training",
    ("lora", "target_modules"): "which linear layers get an adapter (here: attention and MLP projections)",
    ("lora", "trainable_token_indices"): "embedding rows trained in full (tied output layer: also the "
                                         "logit of that token)",
    ("lora", "bias"): "which biases train (none: only the adapters)",
    ("lora", "use_dora"): "DoRA: split each weight into magnitude and direction and adapt both",
    ("lora", "use_rslora"): "rank-stabilized scaling lora_alpha / sqrt(r) instead of lora_alpha / r",
    ("lora", "modules_to_save"): "modules trained in full next to the adapters",
    ("training", "num_train_epochs"): "passes over the training conversations",
    ("training", "max_steps"): "stop after this many optimizer steps (overrides epochs when > 0)",
    ("training", "per_device_train_batch_size"): "conversations per forward/backward pass",
    ("training", "gradient_accumulation_steps"): "passes summed before each optimizer step "
                                                 "(effective batch = batch size × this)",
    ("training", "learning_rate"): "peak learning rate of AdamW",
    ("training", "lr_scheduler_type"): "learning-rate curve after warm-up",
    ("training", "warmup_steps"): "steps of linear warm-up from 0 to the peak learning rate",
    ("training", "warmup_ratio"): "share of all steps spent warming up",
    ("training", "weight_decay"): "AdamW weight decay",
    ("training", "max_length"): "longest conversation in tokens; longer ones are skipped, never truncated",
    ("training", "bf16"): "bfloat16 autocast (auto: where the CPU or GPU supports it)",
    ("training", "gradient_checkpointing"): "recompute activations in the backward pass to save memory",
    ("training", "logging_steps"): "write loss, grad norm and learning rate every this many steps",
    ("training", "eval_strategy"): "when to compute the eval-split loss during training",
    ("training", "eval_steps"): "steps between eval-loss measurements",
    ("training", "per_device_eval_batch_size"): "conversations per eval batch",
    ("training", "packing"): "concatenate conversations into full-length rows",
    ("training", "padding_free"): "batch without padding (position ids mark the sequences)",
    ("training", "max_grad_norm"): "gradient clipping threshold",
    ("training", "optim"): "optimizer",
    ("training", "seed"): "training seed",
    ("training", "train_sampling_strategy"): "order of training examples (group_by_length: batches of similar "
                                             "length, so less padding)",
    ("training", "group_by_length"): "batch conversations of similar length together (less padding)",
}


def _library_help(section: str, key: str) -> str:
    """First sentence of PEFT's / TRL's own help for a field, or ""."""
    import dataclasses

    try:
        if section == "lora":
            from peft import LoraConfig as cls
        else:
            from trl import SFTConfig as cls
        for f in dataclasses.fields(cls):
            if f.name == key:
                text = " ".join(str(f.metadata.get("help", "")).split())
                return re.split(r"(?<=\.)\s", text, maxsplit=1)[0][:160]
    except Exception:  # noqa: BLE001 - a missing library only loses a description
        return ""
    return ""


def _fmt_field(value) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def training_config_table(results: Results) -> pd.DataFrame:
    """Every `lora` (peft.LoraConfig) and `training` (trl.SFTConfig) field of the run, with its meaning."""
    rows = []
    resolved_bf16 = (results.run.get("training") or {}).get("bf16")
    for section in ("lora", "training"):
        for key, value in (results.config.get(section) or {}).items():
            shown = _fmt_field(value)
            if key == "bf16" and value == "auto" and resolved_bf16 is not None:
                shown = f"auto → {resolved_bf16} on this machine"
            meaning = FIELD_MEANINGS.get((section, key)) or _library_help(section, key)
            rows.append({"section": "LoraConfig" if section == "lora" else "SFTConfig",
                         "field": key, "value": shown, "meaning": meaning})
    return pd.DataFrame(rows, columns=["section", "field", "value", "meaning"]).set_index(["section", "field"])


def run_summary_table(results: Results) -> pd.DataFrame:
    """Where and how the run trained: hardware, versions, time, throughput, parameter counts."""
    run = results.run
    hw, tr, v = run.get("hardware") or {}, run.get("training") or {}, run.get("versions") or {}
    cfg_train = results.config.get("training") or {}
    batch = cfg_train.get("per_device_train_batch_size")
    accum = cfg_train.get("gradient_accumulation_steps", 1)
    trainable, total = tr.get("trainable_params"), tr.get("total_params")
    share = f" ({100 * trainable / total:.2f}% of {fmt_params(total)})" if trainable and total else ""
    tokens, assistant = tr.get("train_tokens_per_epoch"), tr.get("train_assistant_tokens_per_epoch")
    rows = [
        ("run", f"{results.name} (config hash {run.get('config_hash', '?')})"),
        ("hardware", f"{hw.get('gpu_count', 1)} × {hw['gpu']}" if hw.get("gpu")
         else f"CPU{' (' + hw['processor'] + ')' if hw.get('processor') else ''}, {hw.get('cpu_count', '?')} cores, "
              f"{hw.get('torch_threads', '?')} torch threads"),
        ("software", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "transformers", "peft", "trl") if v.get(k))),
        ("base model", (results.config.get("model") or {}).get("base", "?")),
        ("training conversations", fmt_count(tr.get("train_conversations"))),
        ("tokens per epoch (of which learned)",
         f"{fmt_count(tokens)} ({fmt_count(assistant)}, {100 * assistant / tokens:.0f}%)" if tokens and assistant
         else fmt_count(tokens)),
        ("epochs; optimizer steps", f"{_fmt_field(tr.get('epochs'))}; {fmt_count(tr.get('global_steps'))}"),
        ("effective batch (conversations)", f"{batch * accum}" if batch else "?"),
        ("trainable parameters", f"{fmt_params(trainable)}{share}"),
        ("bf16 autocast", str(tr.get("bf16"))),
        ("mean training loss (nats/token)", fmt_value(tr.get("train_loss"), "nats")),
        ("training time", fmt_duration(tr.get("train_wall_s"))),
        ("throughput (tokens/s)", f"{tr['tokens_per_second']:,.0f}" if tr.get("tokens_per_second") else "n/a"),
        ("whole run (data + training + evaluation)", fmt_duration(run.get("wall_s"))),
    ]
    for key, seconds in (run.get("timings_s") or {}).items():
        rows.append((f"  time: {key.removesuffix('_s').replace('_', ' ')}", fmt_duration(seconds)))
    df = pd.DataFrame(rows, columns=["item", "value"]).set_index("item")
    return df


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


# --------------------------------------------------------------------------- data


def data_steps_table(results: Results) -> pd.DataFrame:
    """The preprocessing pipeline, step by step, with the count each step left (from data_report.json)."""
    r, run = results.data_report, results.run
    cfg = results.config.get("data") or {}
    f = r.get("filters") or {}
    enc = r.get("encoding_skipped") or {}
    enc_train, enc_eval = sum((enc.get("train") or {}).values()), sum((enc.get("eval") or {}).values())
    max_length = (results.config.get("training") or {}).get("max_length")
    rows = [
        ("1. read", f"records decoded from {r.get('source', '?')}", fmt_count(r.get("n_read"))),
        ("2. validate + normalize",
         f"roles mapped to user/assistant, whitespace stripped, a trailing unanswered user turn dropped "
         f"(in {fmt_count(r.get('n_trimmed'))} of them); records skipped: "
         f"{fmt_count(sum((r.get('skipped') or {}).values()))}",
         fmt_count(r.get("n_loaded"))),
        ("3. filter",
         ", ".join(f"{k}={v}" for k, v in f.items() if v is not None)
         + f"; rejected: {fmt_count(sum((r.get('rejected') or {}).values()))}",
         fmt_count(r.get("n_kept"))),
        ("4. split", f"seed {r.get('seed')}: eval drawn first, then train; unused: {fmt_count(r.get('n_unused'))}",
         f"{fmt_count(r.get('n_train'))} train + {fmt_count(r.get('n_eval'))} eval"),
        ("5. template + tokenize",
         f"Gemma-3 turn format, injection-safe encoding; longer than max_length={max_length} skipped: "
         f"{fmt_count(enc_train)} train, {fmt_count(enc_eval)} eval",
         f"{fmt_count((r.get('n_train') or 0) - enc_train)} train + {fmt_count((r.get('n_eval') or 0) - enc_eval)} eval"),
        ("6. loss mask", "labels only on reply tokens and their end-of-turn; everything else -100",
         f"{fmt_count((run.get('training') or {}).get('train_assistant_tokens_per_epoch'))} learned tokens "
         f"of {fmt_count((run.get('training') or {}).get('train_tokens_per_epoch'))}"),
    ]
    if cfg.get("limit"):
        rows[0] = (rows[0][0], rows[0][1] + f" (first {cfg['limit']:,} only)", rows[0][2])
    return pd.DataFrame(rows, columns=["step", "what happens", "left after the step"]).set_index("step")


def reasons_table(counts: dict, examples: dict | None = None) -> pd.DataFrame:
    """Skip or reject reasons with their counts and a few example record ids."""
    examples = examples or {}
    rows = [{"reason": k, "count": fmt_count(v), "example ids": ", ".join(examples.get(k, [])[:3])}
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return pd.DataFrame(rows, columns=["reason", "count", "example ids"]).set_index("reason")


# --------------------------------------------------------------------------- samples


def samples(results: Results, set: str = "heldout", ids=None) -> list[dict]:
    """Samples of one prompt set, in file order, or exactly `ids` in the order given."""
    rows = [s for s in results.samples if s.get("set") == set]
    if ids is None:
        return rows
    by_id = {str(s["id"]): s for s in rows}
    missing = [i for i in ids if str(i) not in by_id]
    if missing:
        raise KeyError(f"no {set} samples with ids {missing} in {results.path / 'samples.jsonl'}")
    return [by_id[str(i)] for i in ids]


def example_ids(results: Results, set: str = "heldout", n: int = 3, a: str = "sft", b: str = "base_chat") -> list[str]:
    """A deterministic pick: the first n ids, plus the first prompt where a stopped and b did not
    (held-out) or where a followed every instruction and b did not (IFEval), if any."""
    rows = samples(results, set)
    picked = [str(s["id"]) for s in rows[:n]]
    for s in rows:
        ra, rb = s["replies"].get(a), s["replies"].get(b)
        if not ra or not rb or str(s["id"]) in picked:
            continue
        if set == "ifeval":
            wins = all(ra.get("checks_passed") or [False]) and not all(rb.get("checks_passed") or [False])
        else:
            wins = ra.get("stopped") and not rb.get("stopped")
        if wins:
            picked.append(str(s["id"]))
            break
    return picked


def truncate(text: str, max_chars: int | None) -> tuple[str, int]:
    """(shown text, characters hidden), cutting at a word boundary near max_chars."""
    if max_chars is None or len(text) <= max_chars:
        return text, 0
    cut = text.rfind(" ", int(max_chars * 0.8), max_chars)
    cut = cut if cut > 0 else max_chars
    return text[:cut].rstrip(), len(text) - cut


def reply_status(reply: dict) -> str:
    """"stopped (57 tokens)" or "hit the token limit (128 tokens)"."""
    n = reply.get("n_tokens")
    tokens = f" ({n} tokens)" if n is not None else ""
    return ("stopped" if reply.get("stopped") else "hit the token limit") + tokens


def _check_names(sample: dict) -> list[str]:
    out = []
    for c in sample.get("checks") or []:
        args = ", ".join(f"{k}={v}" for k, v in c.items() if k != "type")
        out.append(f"{c['type']}({args})" if args else c["type"])
    return out


_BOX = ("border:1px solid #ccc;border-radius:6px;padding:6px 8px;margin:0;"
        "font-size:0.85em;line-height:1.35;min-width:0")
_TEXT = "white-space:pre-wrap;word-break:break-word;margin:4px 0 0 0;font-family:inherit"


def comparison_card(sample: dict, systems=None, max_chars: int | None = 700) -> tuple[str, str, str]:
    """(html, latex, plain) of one prompt and every system's reply, side by side.

    Text is escaped (replies may contain HTML or LaTeX), each reply says whether it
    stopped or hit the token limit, and long replies are cut with a visible note.
    """
    from .figures import latex_escape

    systems = [s for s in (systems or SYSTEMS) if s in sample["replies"]]
    colors = {"base_continuation": "#8c8c8c", "base_chat": "#e69f00", "sft": "#0072b2", "reference": "#009e73"}
    checks = _check_names(sample)

    def cut(text):
        shown, hidden = truncate(text or "", max_chars)
        return shown, (f"[… {hidden:,} more characters not shown]" if hidden else "")

    # --- prompt
    turns = sample.get("prompt") or []
    h = [f'<div style="{_BOX};background:#f7f7f7"><b>Prompt</b> · {_html.escape(sample.get("set", ""))} · '
         f'id {_html.escape(str(sample.get("id")))}']
    tex = [r"\par\noindent\textbf{Prompt} (" + latex_escape(f"{sample.get('set')}, id {sample.get('id')}") + r")\par"]
    plain = [f"PROMPT ({sample.get('set')}, id {sample.get('id')})"]
    for m in turns:
        shown, note = cut(m["content"])
        h.append(f'<div style="{_TEXT}"><i>{_html.escape(m["role"])}:</i> {_html.escape(shown)}'
                 + (f' <span style="color:#a00">{_html.escape(note)}</span>' if note else "") + "</div>")
        tex.append(r"\noindent\emph{" + latex_escape(m["role"]) + ":} " + _latex_text(shown)
                   + (r" \emph{" + latex_escape(note) + "}" if note else "") + r"\par")
        plain.append(f"{m['role']}: {shown} {note}".rstrip())
    if checks:
        h.append(f'<div style="{_TEXT}"><i>checks:</i> {_html.escape(", ".join(checks))}</div>')
        tex.append(r"\noindent\emph{checks:} " + latex_escape(", ".join(checks)) + r"\par")
        plain.append("checks: " + ", ".join(checks))
    h.append("</div>")

    # --- replies
    h.append('<div style="display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:8px;'
             'margin-top:8px">')
    entries = [(s, label(s), sample["replies"][s]) for s in systems]
    if sample.get("reference"):
        entries.append(("_ref", "ShareGPT reference reply", {"text": sample["reference"]}))
    for key, name, reply in entries:
        shown, note = cut(reply.get("text", ""))
        status = reply_status(reply) if key != "_ref" else "what the dataset's assistant wrote"
        passed = reply.get("checks_passed")
        if passed is not None and checks:
            marks = ", ".join(f"{c}: {'pass' if ok else 'fail'}" for c, ok in zip(checks, passed))
            status += f" · {marks}"
        color = colors.get(key, "#444")
        flag_color = "#1a7f37" if reply.get("stopped") else ("#a00" if key != "_ref" else "#555")
        h.append(
            f'<div style="{_BOX};border-top:4px solid {color}"><b>{_html.escape(name)}</b>'
            f'<div style="color:{flag_color};font-size:0.9em">{_html.escape(status)}</div>'
            f'<div style="{_TEXT}">{_html.escape(shown) if shown.strip() else "<i>(empty reply)</i>"}</div>'
            + (f'<div style="color:#a00;font-size:0.9em">{_html.escape(note)}</div>' if note else "")
            + "</div>"
        )
        tex.append(r"\par\medskip\noindent\textbf{" + latex_escape(name) + r"} --- \emph{" + latex_escape(status)
                   + r"}\par\noindent{\small " + (_latex_text(shown) if shown.strip() else r"\emph{(empty reply)}")
                   + (r" \emph{" + latex_escape(note) + "}" if note else "") + r"}\par")
        plain.append(f"--- {name}: {status}\n{shown}\n{note}".rstrip())
    h.append("</div>")
    return ("".join(h), "\n".join(tex) + "\n\\medskip\n", "\n".join(plain))


def _latex_text(text: str) -> str:
    """Escaped text with its paragraph and line breaks kept, safe anywhere in a paragraph."""
    from .figures import latex_escape

    paras = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = [latex_escape(line) for line in para.split("\n") if line.strip()]
        if lines:
            paras.append(r"\newline ".join(lines))
    return r"\par ".join(paras)


def side_by_side(results: Results, id, set: str | None = None, max_chars: int | None = 700, systems=None) -> None:
    """Display one prompt and every system's reply (HTML in the site, LaTeX in the PDF)."""
    from .figures import show_rich

    pool = [s for s in results.samples if str(s["id"]) == str(id) and (set is None or s["set"] == set)]
    if not pool:
        raise KeyError(f"no sample with id {id!r}{f' in set {set!r}' if set else ''} in {results.path}")
    show_rich(*comparison_card(pool[0], systems=systems, max_chars=max_chars))


def repetition_table(results: Results, set: str = "heldout", threshold: float = 0.5) -> pd.DataFrame:
    """Per system: share of replies that loop (per-reply distinct-2 below `threshold`) and that hit the limit.

    Greedy decoding from a small model often repeats one sentence until the token limit;
    a reply whose word pairs are mostly repeats has distinct-2 well under 1.
    """
    from .metrics import distinct_n

    rows = {}
    for s in results.systems:
        replies = [x["replies"][s] for x in samples(results, set) if s in x["replies"]]
        if not replies:
            continue
        loops = [distinct_n([r["text"]], 2) < threshold for r in replies if r["text"].split()]
        limit = [not r.get("stopped") for r in replies]
        rows[label(s)] = {
            "replies": fmt_count(len(replies)),
            f"looping (distinct-2 < {threshold:g})": fmt_value(sum(loops) / len(replies), "rate"),
            "hit the token limit": fmt_value(sum(limit) / len(replies), "rate"),
            "looping among those at the limit": (
                fmt_value(sum(lp for lp, r in zip(loops, replies) if not r.get("stopped")) / max(1, sum(limit)),
                          "rate") if sum(limit) else "–"),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "system"
    return df


ROLE_LEAK_RULES = {
    1: "template marker",
    2: "speaker label",
    3: "request header",
    4: "bare turn header",
    5: "turn header glued to a stray token",
}


def role_leak_table(results: Results, context: int = 40) -> pd.DataFrame:
    """Every reply flagged as a role leak, in both prompt sets: system, prompt, rule and the text around the match.

    The rules are those of `sftlab.metrics.role_leak`; newlines in the excerpt show as "⏎".
    """
    from .metrics import role_leak_match

    rows = []
    for set_ in ("heldout", "ifeval"):
        for sample in samples(results, set_):
            for s in results.systems:
                reply = sample["replies"].get(s)
                hit = role_leak_match(reply["text"]) if reply else None
                if hit is None:
                    continue
                rule, text = hit
                at = reply["text"].find(text)
                excerpt = reply["text"][max(0, at - context): at + len(text) + context]
                rows.append({"system": label(s), "prompt set": set_, "prompt": str(sample["id"]),
                             "rule": f"{rule}. {ROLE_LEAK_RULES[rule]}",
                             "excerpt": "…" + excerpt.replace("\n", "⏎") + "…"})
    return pd.DataFrame(rows, columns=["system", "prompt set", "prompt", "rule", "excerpt"])


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


# --------------------------------------------------------------------------- tokens


def token_strip(rows: list[dict], max_tokens: int | None = None) -> tuple[str, str]:
    """(html, latex) of tokens in a row: control tokens highlighted, learned (loss-masked-in) tokens underlined.

    `rows` come from `sftlab.chat.token_table`.
    """
    from .figures import latex_escape

    rows = rows[:max_tokens] if max_tokens else rows
    h, t = ['<div style="line-height:2.1;font-family:monospace;font-size:0.85em">'], []
    for r in rows:
        text = r["token"]
        shown = text.replace("\n", "↵").replace(" ", "·") or "∅"
        style = "padding:1px 2px;margin:1px;border-radius:3px;"
        style += "background:#ffd8a8;font-weight:bold;" if r["control"] else "background:#eef;"
        if r["learned"]:
            style += "border-bottom:3px solid #1a7f37;"
        h.append(f'<span title="position {r["position"]}, id {r["id"]}" style="{style}">{_html.escape(shown)}</span>')
        tex_tok = latex_escape(text.replace("\n", "\\n")).replace(" ", r"\textvisiblespace{}") or r"\emph{empty}"
        tex_tok = r"\texttt{" + tex_tok + "}"
        if r["control"]:
            tex_tok = r"\textbf{" + tex_tok + "}"
        if r["learned"]:
            tex_tok = r"\underline{" + tex_tok + "}"
        t.append(tex_tok)
    more = ""
    if max_tokens and len(rows) == max_tokens:
        more = " …"
    h.append(_html.escape(more) + "</div>")
    legend_h = ('<div style="font-size:0.8em"><span style="background:#ffd8a8;font-weight:bold">control token</span> '
                '<span style="border-bottom:3px solid #1a7f37">learned (in the loss)</span> · ↵ newline, · space</div>')
    legend_t = (r"\par\noindent{\small \textbf{bold}: control token; \underline{underlined}: learned (in the loss); "
                r"\texttt{\textbackslash n}: newline}\par")
    return legend_h + "".join(h), r"\par\noindent\sloppy " + " ".join(t) + more + legend_t


def learned_spans(tokenizer, encoded: dict) -> list[str]:
    """The text of each run of consecutive learned tokens (mask 1): one per assistant reply."""
    spans, current = [], []
    for token_id, m in zip(encoded["input_ids"], encoded["assistant_masks"]):
        if m:
            current.append(token_id)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def example_conversation(results: Results, min_turns: int = 2) -> dict:
    """A short real held-out conversation (prompt + reference reply) for the template figures.

    Prefers the shortest with at least `min_turns` assistant replies, else the shortest.
    """
    convs = []
    for s in samples(results, "heldout"):
        messages = list(s["prompt"]) + [{"role": "assistant", "content": s["reference"]}]
        n_turns = sum(m["role"] == "assistant" for m in messages)
        convs.append((n_turns >= min_turns, -sum(len(m["content"]) for m in messages), s["id"], messages))
    if not convs:
        raise ValueError(f"no held-out samples in {results.path / 'samples.jsonl'}")
    best = max(convs, key=lambda c: (c[0], c[1]))
    return {"id": best[2], "messages": best[3]}


def token_frame(rows: list[dict], limit: int | None = None) -> pd.DataFrame:
    """Token rows as a table with the label the loss sees: the token id where learned, else -100."""
    rows = rows[:limit] if limit else rows
    out = [{"position": r["position"], "token": repr(r["token"]), "id": r["id"],
            "control token": "yes" if r["control"] else "",
            "label": r["id"] if r["learned"] else -100} for r in rows]
    return pd.DataFrame(out, columns=["position", "token", "id", "control token", "label"]).set_index("position")


# --------------------------------------------------------------------------- sentences


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


def systems_table(results: Results) -> pd.DataFrame:
    """The systems compared, what each is, and whether this run evaluated it."""
    model = results.config.get("model") or {}
    names = {"base": model.get("base", "?"), "reference": model.get("reference") or "none"}
    rows = [{"system": label(s), "what it is": SYSTEM_DESCRIPTIONS[s].format(**names),
             "in this run": "yes" if s in results.systems
             else ("held-out loss only" if s in (results.metrics.get("heldout_loss") or {}) else "no")}
            for s in SYSTEMS]
    return pd.DataFrame(rows).set_index("system")


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


def lora_norm_summary(results: Results) -> str:
    """Which module types and layers received the largest LoRA updates (relative to their weights)."""
    df = results.lora_norms
    if df.empty or "relative_norm" not in df:
        return ""
    by_module = df.groupby("module")["relative_norm"].mean().sort_values(ascending=False)
    by_layer = df.dropna(subset=["layer"]).groupby("layer")["relative_norm"].mean()
    top = df.loc[df["relative_norm"].idxmax()]
    return (
        f"Averaged over layers, the largest updates relative to the frozen weights are in "
        f"`{by_module.index[0]}` ({by_module.iloc[0]:.4f}) and the smallest in `{by_module.index[-1]}` "
        f"({by_module.iloc[-1]:.4f}); the single largest is `{top['module']}` of layer {int(top['layer'])} "
        f"({top['relative_norm']:.4f}), and the layer with the largest mean update is layer "
        f"{int(by_layer.idxmax())}. The largest ratio ‖ΔW‖/‖W‖ of any module is {df['relative_norm'].max():.4f}"
        + (", so every update is under a tenth of the weight it modifies." if df["relative_norm"].max() < 0.1 else ".")
    )


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
    from .metrics import distinct_n

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
