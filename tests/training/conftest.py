"""Fixtures of the training tests (helpers live in training_testkit.py)."""

from __future__ import annotations

import pytest
import torch

from lrnn.tasks import TASKS
from training_testkit import Echo, PrefixParity


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest, and identically everywhere, on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_tasks(monkeypatch):
    """Register the test tasks under their names for the duration of a test."""
    monkeypatch.setitem(TASKS, PrefixParity.name, PrefixParity)
    monkeypatch.setitem(TASKS, Echo.name, Echo)


