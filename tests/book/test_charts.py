"""Every chart builds valid Vega-Lite, from the hand-made results folder (with or without some
systems), the LoRA calculator, a run's update norms and the tiny model's attention."""

from __future__ import annotations

import pandas as pd
import pytest

from sftlab.book import attention, catalog, charts, lora
from sftlab.book import results as results_mod
from sftlab.book.display import chart_png


@pytest.fixture(params=[None, ["sft"]], ids=["four-systems", "sft-only"])
def results(request, tmp_path, monkeypatch, write_results_folder):
    """Here `results` is the hand-made folder twice: all four systems, and the SFT model alone."""
    monkeypatch.delenv(results_mod.RESULTS_ENV, raising=False)
    if request.param is None:
        write_results_folder(tmp_path)
    else:
        write_results_folder(tmp_path, systems=request.param)
    monkeypatch.chdir(tmp_path)
    return results_mod.load_results()


CHARTS = {
    "skip_reasons": lambda r: charts.chart_skip_reasons(r.data_report),
    "filter_rejects": lambda r: charts.chart_filter_rejects(r.data_report),
    "turns": lambda r: charts.chart_turns(r.data_report),
    "token_lengths": lambda r: charts.chart_token_lengths(r.data_report),
    "loss_curve": charts.chart_loss_curve,
    "learning_rate": charts.chart_learning_rate,
    "metric_comparison": charts.chart_metric_comparison,
    "ifeval_metrics": lambda r: charts.chart_metric_comparison(r, set="ifeval"),
    "ifeval_types": charts.chart_ifeval_types,
    "reply_lengths": charts.chart_reply_lengths,
    "stop_flags": charts.chart_stop_flags,
}


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_builds_valid_vega_lite(results, name):
    spec = CHARTS[name](results).to_dict()  # validates against the Vega-Lite schema
    assert "$schema" in spec


def test_system_colours_and_order_are_the_books(results):
    scale = charts.system_scale()
    assert scale.domain == ["base (plain text)", "base + template", "LoRA SFT", "LoRA SFT (plain text)",
                            "SmolLM2-135M-Instruct"]
    assert scale.range == [catalog.SYSTEM_COLORS[s] for s in catalog.SYSTEMS]
    frame = charts.metric_frame(results)
    assert set(frame["system"]) == {catalog.label(s) for s in results.systems}


def test_rates_are_plotted_as_percentages(results):
    frame = charts.metric_frame(results)
    stop = frame[(frame["metric"] == "stop rate (%)") & (frame["system"] == "LoRA SFT")].iloc[0]
    assert stop["value"] == pytest.approx(60.0) and stop["lo"] == pytest.approx(55.0)


def test_loss_curve_has_raw_smoothed_and_eval_series(results):
    spec = charts.chart_loss_curve(results).to_dict()
    names = {row["series"] for ds in spec["datasets"].values() for row in ds if "series" in row}
    assert {"train loss (each step)", "eval-split loss"} <= names
    assert any(n.startswith("train loss (mean of") for n in names)


def test_token_histogram_is_pre_binned(results):
    spec = charts.chart_token_lengths(results.data_report).to_dict()
    rows = [row for ds in spec["datasets"].values() for row in ds if "conversations" in row]
    assert sum(r["conversations"] for r in rows) == len(results.data_report["raw"]["token_lengths"])


def test_a_chart_renders_to_png(results):
    assert chart_png(charts.chart_stop_flags(results))[:8] == b"\x89PNG\r\n\x1a\n"


# --- the explanatory charts (built, not rendered: rendering a PNG is slow) ---------------------


def test_charts_build(tiny_model, fake_results):
    # the attention charts are built in tests/book/test_attention.py, from a real inside.json
    table = lora.lora_parameter_table(tiny_model, ranks=(4, 8))
    charts.chart_lora_parameters(table, highlight=(8, "attention q,v")).to_dict()
    charts.chart_lora_norms(lora.lora_norms_frame(fake_results)).to_dict()


def test_one_chart_renders_to_png(tiny_model):
    png = chart_png(charts.chart_lora_parameters(lora.lora_parameter_table(tiny_model, ranks=(4, 8))))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
