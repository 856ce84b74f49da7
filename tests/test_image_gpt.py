"""Chapter 10's token models: the sequence layout, the KV cache, sampling, both pipelines' contracts."""
import pytest
import torch

from course_lib import scoreboard
from course_lib.data import shapes
from course_lib.models import image_gpt, maskgit
from course_lib.models.attention import MultiHeadAttention, causal_mask
from course_lib.models.token_pipelines import ShapesGPTPipeline, ShapesMaskGITPipeline
from course_lib.models.vq import build_vq

TINY = {"d_model": 32, "n_heads": 4, "n_layers": 2}


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return image_gpt.build_image_gpt(TINY).eval()


@pytest.fixture(scope="module")
def pipe(gpt):
    torch.manual_seed(1)
    p = ShapesGPTPipeline(gpt, build_vq().eval(), default_top_k=16, default_guidance_scale=2.0)
    p.set_progress_bar_config(disable=True)
    return p


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises((TypeError, ValueError), match="colour"):
        image_gpt.ImageGPTConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="divisible"):
        image_gpt.ImageGPTConfig(d_model=30, n_heads=4)
    with pytest.raises(TypeError, match="causal"):
        image_gpt.ImageGPTConfig(causal="no")


def test_layout_puts_each_kind_of_token_in_its_own_range(gpt):
    lay = gpt.layout
    caps = lay.encode_captions(["a small red circle in the top left", "a large blue square at the top"])
    assert caps.shape == (2, gpt.config.caption_slots)
    assert lay.decode_caption(caps[0]) == "a small red circle in the top left"
    codes = torch.randint(0, gpt.config.codebook_size, (2, 64))
    for direction in ("draw", "read"):
        seq = lay.sequence(direction, caps, codes)
        assert seq.shape == (2, gpt.config.length)
        slots = lay.slots(direction)
        assert sorted(slots.tolist()) == list(range(gpt.config.length)), "every slot exactly once"
        image = seq[:, (slots >= gpt.config.caption_slots + 2)]
        assert torch.equal(image - lay.image_offset, codes), "image tokens hold the codes, in raster order"
    # the same grid cell has the same slot in both orders
    d, r = lay.slots("draw"), lay.slots("read")
    assert torch.equal(d[-64:], r[1:65])
    with pytest.raises(ValueError, match="draw' or 'read"):
        lay.slots("sideways")


def test_captions_outside_the_vocabulary_or_too_long_raise(gpt):
    with pytest.raises(ValueError, match="unknown word 'pink'"):
        gpt.layout.encode_captions(["a pink circle"])
    with pytest.raises(ValueError, match="at most 9"):
        gpt.layout.encode_captions(["a small red circle in the top left " + "a a a"])


def test_kv_cache_gives_the_uncached_logits(gpt):
    lay = gpt.layout
    seq = lay.sequence("draw", lay.encode_captions(["a large green triangle on the right"]),
                       torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0)))
    slots = lay.slots("draw")
    full = gpt(seq, slots)                                                   # [1, L, V]
    caches = [{} for _ in gpt.blocks]
    parts = [gpt.step(seq[:, :12], slots[:12], caches)]
    parts += [gpt.step(seq[:, i:i + 1], slots[i:i + 1], caches) for i in range(12, seq.shape[1])]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)
    assert caches[0]["k"].shape == (1, TINY["n_heads"], seq.shape[1], TINY["d_model"] // TINY["n_heads"])


def test_attend_with_cache_matches_masked_attention_one_token_at_a_time():
    torch.manual_seed(3)
    attn = MultiHeadAttention(16, 2).eval()
    x = torch.randn(2, 7, 16)
    ref, _ = attn(x, attn_mask=causal_mask(7))
    cache = {}
    out = torch.cat([image_gpt.attend_with_cache(attn, x[:, i:i + 1], cache) for i in range(7)], 1)
    assert torch.allclose(out, ref, atol=1e-6)


def test_bidirectional_model_has_no_cache():
    m = image_gpt.build_image_gpt({**TINY, "causal": False})
    with pytest.raises(ValueError, match="causal"):
        m.step(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), [{}, {}])


def test_top_k_filter_and_sampling():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    kept = image_gpt.top_k_filter(logits, 2)
    assert torch.isinf(kept[0, [0, 3]]).all() and torch.equal(kept[0, [1, 2]], logits[0, [1, 2]])
    assert torch.equal(image_gpt.top_k_filter(logits, None), logits)
    draws = torch.stack([image_gpt.sample_logits(logits.expand(500, -1), 1.0, 2,
                                                 torch.Generator().manual_seed(s)) for s in range(2)])
    assert set(draws.unique().tolist()) == {1, 2}, "top-k 2 samples only the two best tokens"
    assert image_gpt.sample_logits(logits, 0).item() == 1, "temperature 0 is the argmax"
    with pytest.raises(ValueError, match="top_k"):
        image_gpt.check_sampling(1.0, 0, 256)
    with pytest.raises(ValueError, match="temperature"):
        image_gpt.check_sampling(-0.5, None, 256)


def test_guidance_on_logits():
    cond, uncond = torch.randn(3, 10), torch.randn(3, 10)
    assert torch.equal(image_gpt.guide_logits(cond, uncond, 1.0), cond)
    g = image_gpt.guide_logits(cond, uncond, 3.0)
    lc, lu = torch.log_softmax(cond, -1), torch.log_softmax(uncond, -1)
    assert torch.allclose(g, lu + 3.0 * (lc - lu))


def test_pipeline_same_seed_same_pictures_and_cache_changes_nothing(pipe):
    prompt = ["a small red circle in the top left", "a large blue circle in the center"]
    a = pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="pt").images
    b = pipe(prompt, generator=torch.Generator().manual_seed(0), output_type="pt", use_cache=False).images
    c = pipe(prompt, generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(pipe(prompt[0], num_images_per_prompt=3, output_type="pil").images) == 3


def test_pipeline_accepts_a_sampler_and_reports_each_token(pipe):
    seen = []
    greedy = lambda logits, generator: logits.argmax(-1)  # noqa: E731
    a = pipe("a small red circle at the top", sampler=greedy, output_type="pt",
             callback=lambda i, codes: seen.append(codes.shape[1])).images
    b = pipe("a small red circle at the top", temperature=0, output_type="pt").images
    assert seen == list(range(1, 65))
    assert torch.allclose(a, b), "a greedy sampler gives the temperature-0 picture"
    with pytest.raises(TypeError, match="sampler"):
        pipe("a small red circle at the top", sampler="greedy")


def test_caption_direction_returns_one_text_per_picture(pipe):
    x, _ = shapes.sample(3, seed=5)
    texts = pipe.caption(x)
    assert isinstance(texts, list) and len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert all(w in pipe.tokenizer.stoi for t in texts for w in t.split())
    with pytest.raises(ValueError):
        pipe.caption(torch.rand(2, 1, 32, 32))


@pytest.mark.parametrize("bad,error", [
    ({"prompt": "a pink circle"}, ValueError), ({"prompt": 3}, TypeError), ({"prompt": []}, ValueError),
    ({"prompt": "a small red circle at the top", "top_k": 0}, ValueError),
    ({"prompt": "a small red circle at the top", "temperature": -1}, ValueError),
    ({"prompt": "a small red circle at the top", "output_type": "jpeg"}, ValueError),
    ({"prompt": "a small red circle at the top", "generator": 0}, TypeError),
])
def test_bad_calls_get_the_course_pipelines_errors(pipe, bad, error):
    with pytest.raises(error):
        pipe(**bad)


def test_maskgit_schedule_masking_and_decoding():
    assert float(maskgit.mask_schedule(0.0)) == 1.0 and float(maskgit.mask_schedule(1.0)) < 1e-6
    torch.manual_seed(0)
    m = image_gpt.build_image_gpt({**TINY, "causal": False}).eval()
    caps = m.layout.encode_captions(["a small red circle at the top"] * 4)
    codes = torch.randint(0, 256, (4, 64))
    ids, hidden = maskgit.masked_inputs(m, caps, codes, torch.Generator().manual_seed(0))
    assert hidden.any(1).all(), "every picture hides at least one token"
    image = ids[:, -64:]
    assert (image[hidden] == m.layout.mask).all() and torch.equal(image[~hidden] - m.layout.image_offset,
                                                                   codes[~hidden])
    assert maskgit.masked_loss(m, caps, codes).ndim == 0
    hidden_counts = []
    out = maskgit.decode(m, caps[:2], steps=4, generator=torch.Generator().manual_seed(0),
                         callback=lambda s, c, h: hidden_counts.append(int(h[0].sum())))
    assert out.shape == (2, 8, 8) and out.min() >= 0 and out.max() < 256
    assert hidden_counts == sorted(hidden_counts, reverse=True) and hidden_counts[-1] == 0
    p = ShapesMaskGITPipeline(m, build_vq().eval())
    p.set_progress_bar_config(disable=True)
    a = p("a small red circle at the top", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
          output_type="pt").images
    b = p("a small red circle at the top", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
          output_type="pt").images
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_inference_steps"):
        p("a small red circle at the top", num_inference_steps=65)


def test_token_pipelines_are_scored_as_text_pipelines(pipe):
    assert scoreboard.is_text_pipeline(pipe)
    assert {type(m).__name__ for m in scoreboard._modules(pipe)} == {"ImageGPT", "VQTokenizer"}


def _prompt_calls():
    from test_pipeline_conventions import BAD_CALLS
    shared = {"prompt", "output_type", "generator", "num_images_per_prompt", "guidance_scale"}
    return [c for c in BAD_CALLS if set(c[0]) <= shared]


@pytest.mark.parametrize("kwargs,error,words", _prompt_calls())
def test_bad_prompts_get_chapter_05s_errors(pipe, kwargs, error, words):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", "a small red circle in the top left")
    with pytest.raises(error) as err:
        pipe(prompt, **{"output_type": "pt", **kwargs})
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_quick_training_runs_both_kinds():
    from course_lib.models import token_training as tt
    for kind in ("gpt", "maskgit"):
        model, hist, settings = tt.train_token_model(kind, steps=2, n_train=64, batch_size=8, progress=False,
                                                     config=TINY)
        assert hist.steps == 2 and settings["batch_size"] == 8
        assert model.config.causal == (kind == "gpt")
        if kind == "gpt":
            assert {"draw_image_loss", "read_caption_loss"} <= set(hist.logs)
    with pytest.raises(ValueError, match="'gpt' or 'maskgit'"):
        tt.train_token_model("diffusion", steps=1)
    with pytest.raises((TypeError, ValueError), match="stepz"):
        tt.train_token_model("gpt", stepz=1)


def test_registered_and_shipped_for_chapter_09():
    from course_lib import pretrained
    assert "course_lib.models.token_training" in pretrained.ENTRY_MODULES
    for name, cls in (("shapes-gpt", ShapesGPTPipeline), ("shapes-maskgit", ShapesMaskGITPipeline)):
        assert pretrained._entry(name).chapter == "10"
        p = pretrained.load(name, device="cpu")
        assert isinstance(p, cls) and p.transformer.config.causal == (name == "shapes-gpt")
        p.set_progress_bar_config(disable=True)
        a, b = (p("a small red circle in the top left", generator=torch.Generator().manual_seed(0),
                  output_type="pt") for _ in range(2))
        assert torch.equal(a.images, b.images), "same seed, same pictures"


def test_shipped_gpt_reads_fresh_pictures():
    from course_lib import pretrained
    from course_lib.models.token_training import reading_accuracy
    p = pretrained.load("shapes-gpt", device="cpu")
    assert reading_accuracy(p, n=400, seed=4242)["exact"] >= 0.95
