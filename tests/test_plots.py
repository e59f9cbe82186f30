"""Every chart builds valid Vega-Lite from a tiny results folder, with or without some systems."""

from __future__ import annotations

import pytest
from test_report import write_results_folder

from sftlab import plots as P
from sftlab import report as R


@pytest.fixture(params=[None, ["sft"]], ids=["four-systems", "sft-only"])
def results(request, tmp_path, monkeypatch):
    monkeypatch.delenv(R.RESULTS_ENV, raising=False)
    if request.param is None:
        write_results_folder(tmp_path)
    else:
        write_results_folder(tmp_path, systems=request.param)
    monkeypatch.chdir(tmp_path)
    return R.load_results()


CHARTS = {
    "skip_reasons": lambda r: P.chart_skip_reasons(r.data_report),
    "filter_rejects": lambda r: P.chart_filter_rejects(r.data_report),
    "turns": lambda r: P.chart_turns(r.data_report),
    "token_lengths": lambda r: P.chart_token_lengths(r.data_report),
    "loss_curve": P.chart_loss_curve,
    "learning_rate": P.chart_learning_rate,
    "lora_norms": P.chart_lora_norms,
    "metric_comparison": P.chart_metric_comparison,
    "ifeval_metrics": lambda r: P.chart_metric_comparison(r, set="ifeval"),
    "ifeval_types": P.chart_ifeval_types,
    "reply_lengths": P.chart_reply_lengths,
    "stop_flags": P.chart_stop_flags,
}


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_chart_builds_valid_vega_lite(results, name):
    spec = CHARTS[name](results).to_dict()  # validates against the Vega-Lite schema
    assert "$schema" in spec


def test_system_colours_and_order_are_the_books(results):
    scale = P.system_scale()
    assert scale.domain == ["base (plain text)", "base + template", "LoRA SFT", "SmolLM2-135M-Instruct"]
    assert scale.range == [P.SYSTEM_COLORS[s] for s in R.SYSTEMS]
    frame = P.metric_frame(results)
    assert set(frame["system"]) == {R.label(s) for s in results.systems}


def test_rates_are_plotted_as_percentages(results):
    frame = P.metric_frame(results)
    stop = frame[(frame["metric"] == "stop rate (%)") & (frame["system"] == "LoRA SFT")].iloc[0]
    assert stop["value"] == pytest.approx(60.0) and stop["lo"] == pytest.approx(55.0)


def test_loss_curve_has_raw_smoothed_and_eval_series(results):
    spec = P.chart_loss_curve(results).to_dict()
    names = {row["series"] for ds in spec["datasets"].values() for row in ds if "series" in row}
    assert {"train loss (each step)", "eval-split loss"} <= names
    assert any(n.startswith("train loss (mean of") for n in names)


def test_token_histogram_is_pre_binned(results):
    spec = P.chart_token_lengths(results.data_report).to_dict()
    rows = [row for ds in spec["datasets"].values() for row in ds if "conversations" in row]
    assert sum(r["conversations"] for r in rows) == len(results.data_report["raw"]["token_lengths"])


def test_a_chart_renders_to_png(results):
    from sftlab.figures import chart_png

    assert chart_png(P.chart_stop_flags(results))[:8] == b"\x89PNG\r\n\x1a\n"
