"""The data report: where every record went, and the shape of the conversations kept.

`data_report` turns what the readers loaded (`LoadResult`), what the filters kept
(`FilterResult`) and the split into a JSON-serializable dict, the `data_report.json` that a
run writes; `format_report` prints it as the plain-text table of `sftlab data`. Chapter 3
"data" (chapters/03-data.qmd) draws its charts and tables from that report and prints
`format_report` at the end of "Q3.3 What preprocessing turns raw records into training
examples?".
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

from .filters import FilterResult, n_turns
from .readers import LoadResult


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile (an actual value of the data, as a table reader expects)."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def data_report(load_result: LoadResult, filter_result: FilterResult, train, eval, *, seed: int | None = None) -> dict:
    """JSON-serializable summary: where each record went, turn and token-length distributions."""
    turns = [n_turns(c["messages"]) for c in filter_result.kept]
    lengths = list(filter_result.token_lengths)
    s = sorted(lengths)
    summary = None
    if s:
        summary = {"min": s[0], "median": float(statistics.median(s)), "p90": _percentile(s, 0.9),
                   "max": s[-1], "mean": round(sum(s) / len(s), 1)}
    n_kept = len(filter_result.kept)
    return {
        "source": load_result.source,
        "n_read": load_result.n_read,
        "n_loaded": len(load_result.conversations),
        "n_trimmed": load_result.trimmed,
        "skipped": dict(load_result.skipped.most_common()),
        "skipped_examples": {k: list(v) for k, v in load_result.skipped_examples.items()},
        "filters": dict(filter_result.settings),
        "n_filter_input": filter_result.n_input,
        "rejected": dict(filter_result.rejected.most_common()),
        "rejected_examples": {k: list(v) for k, v in filter_result.rejected_examples.items()},
        "n_kept": n_kept,
        "seed": seed,
        "n_train": len(train),
        "n_eval": len(eval),
        "n_unused": n_kept - len(train) - len(eval),
        "turns_histogram": {str(k): v for k, v in sorted(Counter(turns).items())},
        "token_lengths": summary,
        "raw": {"turns": turns, "token_lengths": lengths},
        "notes": list(load_result.notes),
    }


def format_report(report: dict) -> str:
    """Plain-text table of `data_report` for the terminal (`sftlab data`)."""
    w = 34

    def row(label: str, value: Any, extra: str = "", indent: int = 2) -> str:
        v = f"{value:,}" if isinstance(value, int) else str(value)
        return f"{' ' * indent}{label:<{w - indent}}{v:>9}{('   ' + extra) if extra else ''}"

    def eg(ids: list[str]) -> str:
        shown = ids[:1] + [i for k, i in enumerate(ids[1:3], 1) if len(", ".join(ids[:k + 1])) <= 60]
        return "e.g. " + ", ".join(shown) if shown else ""

    def reasons(counts: dict, examples: dict) -> list[str]:
        return [row(reason, n, eg(examples.get(reason, [])), indent=4) for reason, n in counts.items()]

    lines = [f"Data source: {report['source']}"]
    lines.append(row("records read", report["n_read"]))
    lines.append(row("valid conversations", report["n_loaded"],
                     f"{report['n_trimmed']:,} had a trailing user turn dropped"))
    lines.append(row("skipped", sum(report["skipped"].values())))
    lines += reasons(report["skipped"], report["skipped_examples"])
    f = report["filters"]
    lines.append("Filters: " + ", ".join(f"{k}={v}" for k, v in f.items()))
    lines.append(row("input", report["n_filter_input"]))
    lines.append(row("rejected", sum(report["rejected"].values())))
    lines += reasons(report["rejected"], report["rejected_examples"])
    lines.append(row("kept", report["n_kept"]))
    seed = f" (seed {report['seed']})" if report.get("seed") is not None else ""
    lines.append(f"Split{seed}:")
    lines.append(row("train", report["n_train"]))
    lines.append(row("eval", report["n_eval"]))
    lines.append(row("unused", report["n_unused"]))
    mix = report.get("instructions")
    if mix:
        lines.append(f"Verifiable-instruction examples (share {mix['share']}, seed {mix['seed']}):")
        lines.append(row("training conversations replaced", mix["n_replaced"]))
        lines += [row(t, n, indent=4) for t, n in sorted(mix["per_type"].items(), key=lambda kv: -kv[1])]
        if mix.get("skipped"):
            lines.append(row("attempts skipped", sum(mix["skipped"].values())))
            lines += [row(r, n, indent=4) for r, n in sorted(mix["skipped"].items(), key=lambda kv: -kv[1])]
        extra = mix.get("extra")
        if extra:
            lines.append(row("added from too-long conversations", extra["n_added"]))
            lines += [row(t, n, indent=4) for t, n in sorted(extra["per_type"].items(), key=lambda kv: -kv[1])]
            if extra.get("skipped"):
                lines.append(row("attempts skipped", sum(extra["skipped"].values()), indent=4))
    hist = report["turns_histogram"]
    if hist:
        lines.append("Assistant turns per kept conversation:")
        top = max(hist.values())
        for k, v in hist.items():
            lines.append(f"  {k:>3}  {v:>7,}  {'#' * max(1, round(40 * v / top))}")
    t = report["token_lengths"]
    if t:
        lines.append(f"Token length of kept conversations (approximate, no template): "
                     f"min {t['min']:,}, median {t['median']:,.0f}, p90 {t['p90']:,}, max {t['max']:,}")
    if report["notes"]:
        lines.append("Notes:")
        lines += [f"  - {n}" for n in report["notes"]]
    return "\n".join(lines)

