"""The model's shape and where its parameters are."""

from __future__ import annotations

import pytest

from sftlab.book import architecture


def test_parameter_breakdown_adds_up(tiny_model):
    parts = architecture.parameter_breakdown(tiny_model)
    assert parts["parameters"].sum() == sum(p.numel() for p in tiny_model.parameters())
    assert parts["share"].sum() == pytest.approx(1)
    facts = architecture.architecture_facts(tiny_model).set_index("fact")["value"]
    assert facts["transformer layers"] == 2 and facts["input and output embeddings tied"] is True
