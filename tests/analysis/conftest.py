"""Fixtures shared by the analysis tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_intra_op_thread():
    """Run on one intra-op thread (tiny systems are fastest so; the CLI sets --threads too) and restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
