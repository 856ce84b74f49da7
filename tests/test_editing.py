"""Chapter 11: editing a picture that exists (SDEdit image to image, RePaint inpainting, DDIM
inversion) on a tiny untrained Shapes text-to-image pipeline."""
import inspect
import pathlib

import numpy as np
import pytest
import torch
from conftest import tiny_t2i_pipeline

from course_lib import diffusion, editing, sampling

PROMPT = "a small red circle in the top left"
PROMPTS = [PROMPT, "a large blue triangle at the bottom"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe():
    return tiny_t2i_pipeline(4)


@pytest.fixture(scope="module")
def img2img(pipe):
    return editing.Img2ImgPipeline.from_pipe(pipe)


@pytest.fixture(scope="module")
def inpaint(pipe):
    return editing.InpaintPipeline.from_pipe(pipe)


@pytest.fixture(scope="module")
def pictures():
    return torch.rand(2, 3, 32, 32, generator=gen(1))


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 8:24, 8:24] = 1.0
    m[1, :, 8:24, 4:8] = 0.5  # a soft edge on the second mask
    return m


# ---- from_pipe --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [editing.Img2ImgPipeline, editing.InpaintPipeline])
def test_from_pipe_shares_the_modules(pipe, cls):
    new = cls.from_pipe(pipe)
    assert isinstance(new, cls)
    assert new.unet is pipe.unet and new.text_encoder is pipe.text_encoder
    assert new.scheduler is pipe.scheduler
    assert new.default_num_inference_steps == 4 and new.default_guidance_scale == 2.0
    assert cls.from_pipe(pipe, default_guidance_scale=1.0).default_guidance_scale == 1.0


def test_from_pipe_refuses_other_things(pipe):
    with pytest.raises(TypeError, match="ShapesPipeline"):
        editing.Img2ImgPipeline.from_pipe("shapes-t2i")
    with pytest.raises(TypeError, match="may replace"):
        editing.Img2ImgPipeline.from_pipe(pipe, vae=None)


# ---- noise_to_strength against diffusers -----------------------------------------------------
def diffusers_get_timesteps(scheduler, num_inference_steps, strength):
    """StableDiffusionImg2ImgPipeline.get_timesteps, line by line."""
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    return scheduler.timesteps[t_start * scheduler.order:], num_inference_steps - t_start


def test_diffusers_still_computes_timesteps_this_way():
    import diffusers.pipelines.stable_diffusion as sd

    src = (pathlib.Path(sd.__file__).parent / "pipeline_stable_diffusion_img2img.py").read_text()
    body = src[src.index("def get_timesteps"):]
    body = body[:body.index("return timesteps")]
    for line in inspect.getsource(diffusers_get_timesteps).splitlines()[2:4]:
        assert line.strip() in body


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm++", "euler", "unipc"])
@pytest.mark.parametrize("strength", [0.0, 0.05, 0.3, 0.5, 0.75, 0.99, 1.0])
def test_noise_to_strength_follows_diffusers_timesteps(sampler, strength):
    sch = sampling.make_scheduler(sampler, {"schedule": "cosine",
                                            "prediction_type": "v_prediction"})
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    x_t, ts = editing.noise_to_strength(sch, x0, strength, 10, gen(3))
    sch.set_timesteps(10)
    want, n_run = diffusers_get_timesteps(sch, 10, strength)
    assert torch.equal(ts, want) and len(ts) == n_run * sch.order
    if n_run == 0:
        assert x_t is x0
        return
    noise = torch.randn(x0.shape, generator=gen(3))
    if hasattr(sch, "set_begin_index"):
        sch.set_begin_index(len(sch.timesteps) - len(ts))
    expected = sch.add_noise(x0, noise, ts[:1].repeat(3))
    assert torch.allclose(x_t, expected, atol=1e-6)


# ---- image to image ----------------------------------------------------------------------------
def test_strength_zero_returns_the_input(img2img, pictures):
    out = img2img(PROMPT, image=pictures, strength=0.0, output_type="pt").images
    assert torch.equal(out, pictures)


def test_strength_one_ignores_the_input(img2img, pictures):
    other = torch.rand(2, 3, 32, 32, generator=gen(2))
    a = img2img(PROMPT, image=pictures, strength=1.0, generator=gen(), output_type="pt").images
    b = img2img(PROMPT, image=other, strength=1.0, generator=gen(), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-3)
    c = img2img(PROMPT, image=pictures, strength=0.5, generator=gen(), output_type="pt").images
    d = img2img(PROMPT, image=other, strength=0.5, generator=gen(), output_type="pt").images
    assert (c - d).abs().max() > 0.05  # half way, the input still shows


def test_img2img_output_types_and_counts(img2img, pictures):
    pt = img2img(PROMPTS, image=pictures, strength=0.5, generator=gen(), output_type="pt").images
    assert pt.shape == (2, 3, 32, 32) and 0 <= pt.min() and pt.max() <= 1
    npy = img2img(PROMPTS, image=pictures, strength=0.5, generator=gen(), output_type="np").images
    assert npy.shape == (2, 32, 32, 3) and np.allclose(npy, pt.permute(0, 2, 3, 1).numpy())
    one_picture = img2img(PROMPTS, image=pictures[:1], strength=0.5, output_type="pt").images
    one_prompt = img2img(PROMPT, image=pictures, strength=0.5, output_type="pt").images
    assert one_picture.shape == one_prompt.shape == (2, 3, 32, 32)
    pil = img2img(PROMPT, image=img2img.numpy_to_pil(npy[:1])[0], strength=0.5,
                  output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (32, 32)


# ---- inpainting --------------------------------------------------------------------------------
@pytest.mark.parametrize("resample", [1, 2])
def test_inpaint_keeps_the_pixels_outside_the_mask(inpaint, pictures, mask, resample):
    out = inpaint(PROMPTS, image=pictures, mask_image=mask, resample=resample, generator=gen(),
                  output_type="pt").images
    keep = (mask == 0).expand_as(pictures)
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[keep], pictures[keep])
    assert (out - pictures)[~keep].abs().max() > 0.05


def test_inpaint_with_nothing_to_repaint_returns_the_source(inpaint, pictures):
    out = inpaint(PROMPT, image=pictures, mask_image=torch.zeros(1, 1, 32, 32), generator=gen(),
                  output_type="pt").images
    assert torch.equal(out, pictures)


def test_resampling_needs_a_variance_preserving_sampler(pipe, pictures, mask):
    euler = editing.InpaintPipeline.from_pipe(pipe, scheduler=sampling.make_scheduler("euler",
                                                                                      pipe))
    out = euler(PROMPT, image=pictures, mask_image=mask, output_type="pt").images  # resample 1
    assert torch.equal(out[(mask == 0).expand_as(out)], pictures[(mask == 0).expand_as(out)])
    with pytest.raises(ValueError, match="variance-preserving"):
        euler(PROMPT, image=pictures, mask_image=mask, resample=2)


def test_blend_known_algebra():
    x_t, known = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert torch.equal(editing.blend_known(x_t, known, ones), x_t)
    assert torch.equal(editing.blend_known(x_t, known, zeros), known)
    quarter = torch.full((2, 1, 4, 4), 0.25)
    assert torch.allclose(editing.blend_known(x_t, known, quarter), 0.25 * x_t + 0.75 * known)
    m = (torch.rand(2, 1, 4, 4) > 0.5).float()
    out = editing.blend_known(x_t, known, m)
    sel = m.bool().expand_as(x_t)
    assert torch.equal(out[sel], x_t[sel]) and torch.equal(out[~sel], known[~sel])


def test_jump_back_is_the_forward_process_between_levels():
    ac = diffusion.NoiseSchedule.make("cosine", 1000).alphas_cumprod
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(editing.jump_back(x, ac[300], ac[300], gen()), x)
    # x_s ~ q(x_s | x_0 = 0) has variance 1 - ᾱ_s; one jump gives variance 1 - ᾱ_t
    x_s = (1 - ac[300]).sqrt() * torch.randn(200_000, generator=gen(4))
    x_t = editing.jump_back(x_s, ac[300], ac[600], gen(5))
    assert abs(float(x_t.var()) - float(1 - ac[600])) < 0.01


# ---- DDIM inversion ----------------------------------------------------------------------------
def test_ddim_inversion_round_trip_improves_with_steps(pipe, pictures):
    errors = []
    for steps in (2, 8, 32):
        z = editing.ddim_invert(pipe, pictures[:1], PROMPT, steps)
        assert z.shape == (1, 3, 32, 32)
        back = editing.ddim_reconstruct(pipe, z, PROMPT, steps)
        errors.append(float((back - pictures[:1]).abs().mean()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05, errors


# ---- bad input ---------------------------------------------------------------------------------
BAD_IMG2IMG = [
    (dict(image=torch.rand(1, 3, 16, 16)), ValueError, r"\[n, 3, 32, 32\]"),
    (dict(image=torch.rand(1, 1, 32, 32)), ValueError, "3 colour channels"),
    (dict(image=torch.rand(1, 3, 32, 32) * 2 - 1), ValueError, r"values in \[0, 1\]"),
    (dict(image=torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)), TypeError, "float"),
    (dict(image=np.zeros((32, 32, 3))), TypeError, "PIL image"),
    (dict(image=None), TypeError, "tensor"),
    (dict(strength=1.5), ValueError, "strength must be .* from 0.0 to 1.0"),
    (dict(strength=-0.1), ValueError, "strength"),
    (dict(strength="half"), TypeError, "strength"),
    (dict(prompt=""), ValueError, "empty"),
    (dict(prompt=[]), ValueError, "non-empty"),
    (dict(prompt=PROMPTS + [PROMPT], image=torch.rand(2, 3, 32, 32)), ValueError,
     "equal numbers"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(guidance_scale=-1), ValueError, "guidance_scale"),
    (dict(output_type="latent"), ValueError, "'pil', 'np', 'pt'"),
    (dict(generator=0), TypeError, "torch.Generator"),
]


@pytest.mark.parametrize("kwargs,err,pattern", BAD_IMG2IMG)
def test_img2img_bad_input_names_what_is_allowed(img2img, kwargs, err, pattern):
    call = {"prompt": PROMPT, "image": torch.rand(1, 3, 32, 32), "num_inference_steps": 2,
            **kwargs}
    with pytest.raises(err, match=pattern):
        img2img(**call)


BAD_MASKS = [
    (torch.ones(1, 3, 32, 32), ValueError, r"\[2, 1, 32, 32\]"),
    (torch.ones(2, 1, 16, 16), ValueError, "one channel"),
    (torch.ones(3, 1, 32, 32), ValueError, "shape"),
    (torch.full((2, 1, 32, 32), 2.0), ValueError, r"values in \[0, 1\]"),
    (torch.full((2, 1, 32, 32), -0.5), ValueError, r"values in \[0, 1\]"),
    (None, TypeError, "mask_image is required"),
    (torch.ones(2, 1, 32, 32, dtype=torch.bool), TypeError, "float"),
]


@pytest.mark.parametrize("mask_image,err,pattern", BAD_MASKS)
def test_inpaint_bad_mask_names_what_is_allowed(inpaint, pictures, mask_image, err, pattern):
    with pytest.raises(err, match=pattern):
        inpaint(PROMPT, image=pictures, mask_image=mask_image, num_inference_steps=2)


def test_inpaint_bad_resample_and_ddim_invert_bad_input(inpaint, pipe, pictures, mask):
    with pytest.raises(ValueError, match="resample"):
        inpaint(PROMPT, image=pictures, mask_image=mask, resample=0)
    with pytest.raises(ValueError, match="empty"):
        editing.ddim_invert(pipe, pictures, "", 2)
    with pytest.raises(ValueError, match=r"\[n, 3, 32, 32\]"):
        editing.ddim_invert(pipe, torch.rand(1, 3, 8, 8), PROMPT, 2)


# ---- the exercises' hooks ----------------------------------------------------------------------
def test_img2img_runs_a_given_noise_fn(img2img, pictures):
    calls = []

    def recorded(*args):
        calls.append(args[2])                                   # the strength it was given
        return editing.noise_to_strength(*args)

    a = img2img(PROMPT, image=pictures, strength=0.5, generator=gen(), output_type="pt").images
    b = img2img(PROMPT, image=pictures, strength=0.5, generator=gen(), output_type="pt",
                noise_fn=recorded).images
    assert calls == [0.5] and torch.equal(a, b)
    with pytest.raises(TypeError, match="noise_fn must be a function"):
        img2img(PROMPT, image=pictures, noise_fn="ddim")


def test_inpaint_runs_a_given_blend_fn(inpaint, pictures, mask):
    calls = []

    def recorded(x_t, known, m):
        calls.append(x_t.shape)
        return editing.blend_known(x_t, known, m)

    kw = dict(image=pictures, mask_image=mask, output_type="pt")
    a = inpaint(PROMPTS, **kw, generator=gen()).images
    b = inpaint(PROMPTS, **kw, generator=gen(), blend_fn=recorded).images
    assert torch.equal(a, b)
    assert len(calls) == inpaint.default_num_inference_steps + 1     # every step, then the paste
    with pytest.raises(TypeError, match="blend_fn must be a function"):
        inpaint(PROMPT, image=pictures, mask_image=mask, blend_fn=1)


def test_ddim_inverse_step_is_diffusers_inverse_update():
    from diffusers import DDIMInverseScheduler

    sch = DDIMInverseScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                               timestep_spacing="trailing", clip_sample=False)
    sch.set_timesteps(5)
    x = torch.randn(2, 3, 4, 4, generator=gen(6))
    for t in sch.timesteps:
        eps = torch.randn(2, 3, 4, 4, generator=gen(int(t)))
        t_from = int(t) - 1000 // 5
        a_from = sch.alphas_cumprod[t_from] if t_from >= 0 else sch.initial_alpha_cumprod
        ours = editing.ddim_inverse_step(x, eps, float(a_from), float(sch.alphas_cumprod[t]))
        x = sch.step(eps, t, x).prev_sample
        assert torch.allclose(ours, x, atol=1e-5)


def test_ddim_invert_runs_a_given_step_fn(pipe, pictures):
    own = editing.ddim_invert(pipe, pictures, PROMPT, 4)
    seen = []

    def recorded(x, eps, a_from, a_to):
        seen.append((round(a_from, 4), round(a_to, 4)))
        return editing.ddim_inverse_step(x, eps, a_from, a_to)

    ours = editing.ddim_invert(pipe, pictures, PROMPT, 4, step_fn=recorded)
    assert torch.allclose(own, ours, atol=1e-4)
    assert len(seen) == 4 and seen[0][0] == 1.0                      # from the clean picture up
    assert all(a > b for a, b in seen) and all(b1 == a2 for (_, b1), (a2, _) in zip(seen, seen[1:]))
    with pytest.raises(TypeError, match="step_fn must be a function"):
        editing.ddim_invert(pipe, pictures, PROMPT, 4, step_fn=3)


def test_guided_inversion_round_trip(pipe, pictures):
    """Guidance is accepted both ways; at w = 1 it is the plain round trip."""
    z1 = editing.ddim_invert(pipe, pictures[:1], PROMPT, 8, guidance_scale=1.0)
    assert torch.equal(z1, editing.ddim_invert(pipe, pictures[:1], PROMPT, 8))
    z3 = editing.ddim_invert(pipe, pictures[:1], PROMPT, 8, guidance_scale=3.0)
    assert z3.shape == (1, 3, 32, 32) and not torch.allclose(z1, z3)
    back = editing.ddim_reconstruct(pipe, z3, PROMPT, 8, guidance_scale=3.0)
    assert back.shape == (1, 3, 32, 32) and 0 <= back.min() and back.max() <= 1
    with pytest.raises(ValueError, match="guidance_scale"):
        editing.ddim_reconstruct(pipe, z1, PROMPT, 8, guidance_scale=-1.0)
