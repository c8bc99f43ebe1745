"""Fixtures for the tests of ``lrnn.ops``.

The shared helper functions (relative error, seeded input builders, gradient runs) live in
``ops_helpers.py`` and are imported from there: ``from conftest import ...`` picks up whichever
conftest.py pytest loaded last once a second test directory has one.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_global_rng():
    """Seed torch's global generator before every test, so anything drawing from it is reproducible.

    The input builders use their own ``torch.Generator`` seeded per call; this is the safety net.
    """
    torch.manual_seed(0)
