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


#: A tiny untrained Shapes text-to-image model: the editing tests (chapter 11) run on it.
TINY_T2I = {"fold": 2, "text": {"dim": 16, "layers": 1, "heads": 2},
            "unet": {"block_out_channels": [8, 16], "attention_head_dim": 8, "norm_num_groups": 4,
                     "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                     "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}}


def tiny_t2i_pipeline(num_inference_steps: int):
    """A pipeline around a freshly seeded :data:`TINY_T2I` model, guidance 2, no progress bar."""
    from course_lib.models import text_to_image as t2i

    torch.manual_seed(0)
    p = t2i.make_pipeline(t2i.TextToImageModel(TINY_T2I).eval(),
                          num_inference_steps=num_inference_steps, guidance_scale=2.0)
    p.set_progress_bar_config(disable=True)
    return p
