"""The suite runs on pytest-xdist workers (pytest.ini: ``-n auto``), each with torch on one thread, so
that the workers share the cores instead of fighting over them. The fused kernels split a batch over
threads, so their tests (test_ops_*) run on two: a race between threads would otherwise go unseen."""
import os

import pytest
import torch

WORKER_THREADS, KERNEL_THREADS = 1, 2

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(WORKER_THREADS)


@pytest.fixture(scope="module", autouse=True)
def kernel_threads(request):
    if not request.module.__name__.startswith("test_ops"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(KERNEL_THREADS)
    yield
    torch.set_num_threads(before)
