"""The course's one sampling loop (course_lib.sampling): guidance, the loop, the scheduler factory, and
the shipped models' pictures, which must not change when the library does."""
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from course_lib import pretrained, samplers, sampling
from course_lib.models import ddpm

REFERENCE = str(Path(__file__).resolve().parent / "data" / "reference_pictures.safetensors")
CAPS = ["a small red circle in the top left", "a large blue triangle at the bottom",
        "a small purple triangle in the center", "a large orange square on the right"]


def test_guide_is_the_guidance_line():
    u, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(sampling.guide(u, c, 1.0), c)
    assert torch.equal(sampling.guide(u, c, 0.0), u)
    assert torch.allclose(sampling.guide(u, c, 3.0), torch.tensor([7.0, -4.0]))
    # Ho & Salimans' (1 + w') c - w' u with w' = scale - 1
    w = 2.5
    assert torch.allclose(sampling.guide(u, c, w), (1 + (w - 1)) * c - (w - 1) * u)


class _Net:
    """A toy network: its output depends on x, t and the conditioning; it counts its calls."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(len(x))
        states, pooled = cond
        tt = t.float().reshape(-1, 1) if isinstance(t, torch.Tensor) and t.dim() else float(t)
        return x * 0.5 + states.sum(1) + pooled * tt / 1000


@pytest.mark.parametrize("t", [torch.tensor(500), torch.tensor([10, 900, 400])])
def test_guided_modes_agree(t):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    cond = (torch.randn(3, 2, 4, generator=g), torch.randn(3, 4, generator=g))
    uncond = (torch.zeros(3, 2, 4), torch.zeros(3, 4))
    net = _Net()
    batched = sampling.guided(net, x, t, cond, uncond, 3.0, "batched")
    sequential = sampling.guided(net, x, t, cond, uncond, 3.0, "sequential")
    off = sampling.guided(net, x, t, cond, uncond, 3.0, "off")
    assert net.batches == [6, 3, 3, 3]                   # one call of 2n, two of n, one of n
    assert torch.allclose(batched, sequential, atol=1e-6)
    assert torch.allclose(off, net(x, t, cond))
    assert not torch.allclose(batched, off)
    assert torch.allclose(sampling.guided(net, x, t, cond, uncond, 1.0), off), "scale 1 is no guidance"
    with pytest.raises(ValueError, match="batched"):
        sampling.guided(net, x, t, cond, uncond, 3.0, "twice")


def test_denoise_loop_callback_sees_and_replaces_latents():
    sched = sampling.make_scheduler("ddim", {"schedule": "cosine", "prediction_type": "epsilon"})
    seen = []

    def cb(pipe, i, t, kwargs):
        seen.append((i, int(t), kwargs["latents"].shape))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 1 else {}

    net = lambda x, t, cond: torch.zeros_like(x)  # noqa: E731  (predicts ε = 0)
    out = sampling.denoise_loop(sched, net, torch.randn(2, 3), 3, callback_on_step_end=cb)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] == 999
    assert torch.allclose(out, torch.zeros(2, 3), atol=1e-6), "the replaced latents must be used"


def test_scheduler_factory_refuses_unknown_names_and_mixes():
    with pytest.raises(ValueError, match="ddim"):
        sampling.make_scheduler("heun", {"schedule": "cosine"})
    with pytest.raises(ValueError, match="spacing"):
        sampling.make_scheduler("ddim", {"schedule": "cosine"}, spacing="middle")
    flow = sampling.make_scheduler("flow-euler", {"prediction_type": "flow"})
    assert type(flow).__name__ == "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ValueError, match="flow"):
        sampling.make_scheduler("ddim", {"prediction_type": "flow"})


def test_one_loop_in_the_library():
    """Every Shapes pipeline, the sampler sweep and the digit sampler go through denoise_loop."""
    import inspect

    from course_lib.models import latent, text_to_image as t2i

    src = inspect.getsource(t2i.ShapesPipeline.__call__)
    assert "sampling.denoise_loop" in src and "scheduler.step" not in src
    assert latent.LatentShapesPipeline.__call__ is t2i.ShapesPipeline.__call__
    assert "sampling.denoise_loop" in inspect.getsource(ddpm.sample_digits)
    assert "scheduler.step" not in inspect.getsource(samplers)


# --------------------------------------------------------------------------------------------
# The shipped models draw the same pictures as when they were recorded
# --------------------------------------------------------------------------------------------
#: How far a recorded picture may move: half of one grey level of an 8-bit picture, a change no one
#: can see. float32 kernels differ between CPUs and thread counts (ddpm-mnist, DPM-Solver++ 4 steps:
#: 6.5e-6 between 1 and 2 threads on an AVX-512 CPU; 1.0e-4 on a CPU with AMX), while one more
#: sampling step moves the same digits by 134 times this tolerance and guidance 2.1 for 2.0 by 37
#: times (test_the_tolerance_sees_a_real_change).
TOLERANCE = 0.5 / 255


@pytest.fixture(scope="module")
def reference():
    return load_file(REFERENCE)


@pytest.mark.parametrize("name", ["shapes-t2i", "shapes-t2i-latent", "shapes-t2i-fast"])
def test_shipped_pipelines_draw_the_recorded_pictures(reference, name):
    pipe = pretrained.load(name, device="cpu")
    got = pipe(CAPS, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert (got - reference[name]).abs().max() < TOLERANCE


def test_sampler_variants_draw_the_recorded_pictures(reference):
    pipe = pretrained.load("shapes-t2i", device="cpu")
    for mode in ("sequential", "off"):
        got = samplers.sample_shapes(pipe, CAPS, sampling.make_scheduler("dpm++", pipe), 8, seed=0, cfg=mode)
        assert (got - reference[f"shapes-t2i-dpm++8-{mode}"]).abs().max() < TOLERANCE, mode
    got = samplers.sample_shapes(pipe, CAPS, sampling.make_scheduler("euler-a", pipe), 6, seed=0)
    assert (got - reference["shapes-t2i-euler-a-6"]).abs().max() < TOLERANCE


def test_digit_samplers_draw_the_recorded_pictures(reference):
    m = pretrained.load("ddpm-mnist", device="cpu")
    got = {
        "ddpm-mnist-ddim10-w2": ddpm.sample_digits(m, labels=[0, 1, 2, 3], guidance_scale=2.0,
                                                   num_inference_steps=10, seed=0),
        "ddpm-mnist-ddpm10": ddpm.sample_digits(m, n=4, sampler="ddpm", num_inference_steps=10, seed=0),
        "ddpm-mnist-dpm++4-w2": ddpm.sample_digits(m, [4, 5, 6, 7], sampler="dpm++",
                                                   num_inference_steps=4, guidance_scale=2.0, seed=0),
        "ddpm-mnist-dpm++4-uncond": ddpm.sample_digits(m, None, 4, sampler="dpm++",
                                                       num_inference_steps=4, seed=0),
    }
    for k, v in got.items():
        assert (v - reference[k]).abs().max() < TOLERANCE, k
    assert not math.isclose(float(got["ddpm-mnist-ddpm10"].mean()), float(got["ddpm-mnist-ddim10-w2"].mean()))


def test_the_tolerance_sees_a_real_change():
    """The recorded-picture checks can fail: one more sampling step, or guidance 2.1 for 2.0,
    moves the pictures by far more than TOLERANCE."""
    m = pretrained.load("ddpm-mnist", device="cpu")
    base = ddpm.sample_digits(m, [4, 5], sampler="dpm++", num_inference_steps=4, guidance_scale=2.0)
    more = ddpm.sample_digits(m, [4, 5], sampler="dpm++", num_inference_steps=5, guidance_scale=2.0)
    nudged = ddpm.sample_digits(m, [4, 5], sampler="dpm++", num_inference_steps=4,
                                guidance_scale=2.1)
    assert (more - base).abs().max() > 20 * TOLERANCE
    assert (nudged - base).abs().max() > 5 * TOLERANCE
