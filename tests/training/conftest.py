"""Fixtures of the training tests (helpers live in training_testkit.py)."""

from __future__ import annotations

import pytest

from lrnn.tasks import TASKS
from training_testkit import Echo, PrefixParity


@pytest.fixture
def fake_tasks(monkeypatch):
    """Register the test tasks under their names for the duration of a test."""
    monkeypatch.setitem(TASKS, PrefixParity.name, PrefixParity)
    monkeypatch.setitem(TASKS, Echo.name, Echo)


