"""Shared test set-up: lib's unit tests use tiny tensors, for which one thread is as fast as two and
immune to oversubscription when several jobs share the machine. Each test gets one thread and the
previous count back afterwards (tests that need another count set it themselves)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
