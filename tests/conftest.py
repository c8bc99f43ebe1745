"""Fixtures of the whole test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Every test runs on one intra-op thread, restored afterwards: the tiny models and ops here run fastest
    so, results do not depend on the machine's core count, and a second thread stalls badly on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
