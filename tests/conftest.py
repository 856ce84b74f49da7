import os

os.environ.setdefault("COURSE_QUICK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The course's test models are tiny: one torch thread is as fast as two on an idle 2-core
    machine and many times faster on a busy one, where two threads spin waiting for each other
    (measured while developing the chapters: a GAN step 1.9 s with 2 threads, 0.18 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
