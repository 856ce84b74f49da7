"""Chapter 11's instruction editor (InstructPix2Pix in miniature): the triplets and their wordings,
the two-scale guidance line, the pipeline's call convention and its answers to bad calls, on a tiny
untrained model reading frozen MiniLM (the shipped one reads mpnet)."""
import re

import numpy as np
import pytest
import torch

from course_lib import diffusion, instruct_edit as ie, pretrained, sampling
from course_lib.data import edit_wordings as ew
from course_lib.data import shapes

TINY = {"text": {"kind": "minilm", "dim": 384, "max_length": 24, "layers": 1},
        "unet": {"block_out_channels": [8, 16], "attention_head_dim": 8, "norm_num_groups": 4}}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ie.InstructEditModel(TINY).eval()


@pytest.fixture(scope="module")
def pipe(model):
    p = ie.make_pipeline(model, num_inference_steps=2, guidance_scale=2.0, image_guidance_scale=1.5)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def trip():
    return ew.make_triplets(60, seed=3)


# ---- the guidance line ---------------------------------------------------------------------
def test_guide_chain_is_the_two_scale_formula():
    e00, ei0, eit = torch.randn(3, 4, 12, 16, 16, generator=gen(2))
    s_i, s_t = 1.7, 4.2
    want = e00 + s_i * (ei0 - e00) + s_t * (eit - ei0)
    torch.testing.assert_close(sampling.guide(e00, [ei0, eit], [s_i, s_t]), want)
    # one condition in a list is ordinary classifier-free guidance
    torch.testing.assert_close(sampling.guide(e00, [eit], [s_t]), sampling.guide(e00, eit, s_t))
    # both scales 1: the fully conditioned prediction; s_I = 0 and s_T = 0: the unconditioned one
    torch.testing.assert_close(sampling.guide(e00, [ei0, eit], [1.0, 1.0]), eit)
    torch.testing.assert_close(sampling.guide(e00, [ei0, eit], [0.0, 0.0]), e00)
    with pytest.raises(ValueError, match="one scale per condition"):
        sampling.guide(e00, [ei0, eit], 2.0)
    with pytest.raises(ValueError, match="one scale per condition"):
        sampling.guide(e00, [ei0, eit], [2.0])


def test_pipeline_step_is_the_formula(pipe, trip):
    """One DDIM step of the pipeline equals the step on e(∅,∅) + s_I (e(I,∅) - e(∅,∅)) +
    s_T (e(I,T) - e(I,∅)), the three predictions made one by one."""
    ddim = pipe.with_scheduler(sampling.make_scheduler("ddim", pipe))
    texts, src = trip["instructions"][:3], trip["sources"][:3]
    noise = torch.randn(3, 3, 32, 32, generator=gen(5))
    s_t, s_i = 3.5, 1.25
    got = ddim(texts, image=src, num_inference_steps=1, guidance_scale=s_t,
               image_guidance_scale=s_i, latents=noise, output_type="pt").images
    sch = sampling.make_scheduler("ddim", pipe)
    sch.set_timesteps(1)
    t = sch.timesteps[0]
    x = torch.nn.functional.pixel_unshuffle(noise, 2)  # [3, 12, 16, 16]
    source = torch.nn.functional.pixel_unshuffle(diffusion.to_model_range(src), 2)
    with torch.no_grad():
        # the network reads each instruction in its plainest words (the default)
        states, pooled = pipe.encode_prompt([ie.rewrite_instruction(t) for t in texts])
        e_states, e_pooled = pipe.encode_prompt([""] * 3)
        e00 = pipe.network(x, t, (e_states, e_pooled, torch.zeros_like(source)))
        ei0 = pipe.network(x, t, (e_states, e_pooled, source))
        eit = pipe.network(x, t, (states, pooled, source))
    v = e00 + s_i * (ei0 - e00) + s_t * (eit - ei0)
    want = pipe.decode_latents(sch.step(v, t, x).prev_sample)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_three_predictions_in_one_call_and_one_without_guidance(pipe, trip):
    sizes = []
    hook = pipe.unet.register_forward_hook(lambda m, a, kw_out: sizes.append(len(a[0])))
    try:
        pipe(trip["instructions"][:2], image=trip["sources"][:2], output_type="pt")
        n_guided = list(sizes)
        sizes.clear()
        pipe(trip["instructions"][:2], image=trip["sources"][:2], guidance_scale=1.0,
             image_guidance_scale=1.0, output_type="pt")
    finally:
        hook.remove()
    assert n_guided == [6, 6] and sizes == [2, 2]


# ---- the call convention --------------------------------------------------------------------
def test_call_convention(pipe, trip):
    texts, src = trip["instructions"][:3], trip["sources"][:3]
    out = pipe(texts, image=src, generator=gen(0), output_type="pt").images
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    again = pipe(texts, image=src, generator=gen(0), output_type="pt").images
    assert torch.equal(out, again)
    arr = pipe(texts, image=src, generator=gen(0), output_type="np").images
    assert arr.shape == (3, 32, 32, 3)
    pil = pipe(texts, image=src, generator=gen(0)).images
    assert len(pil) == 3 and pil[0].size == (32, 32)
    (tup,) = pipe(texts, image=src, generator=gen(0), output_type="pt", return_dict=False)
    assert torch.equal(tup, out)
    # one instruction for every picture, or one picture for every instruction
    assert pipe("make it blue", image=src, output_type="pt").images.shape == (3, 3, 32, 32)
    assert pipe(texts, image=src[0], output_type="pt").images.shape == (3, 3, 32, 32)
    assert pipe.default_image_guidance_scale == 1.5 and pipe.fold == 2


BAD = [
    ({"image": torch.rand(2, 3, 16, 16)}, ValueError, ["image", "[n, 3, 32, 32]"]),
    ({"image": torch.rand(2, 1, 32, 32)}, ValueError, ["image", "3 colour channels"]),
    ({"image": torch.rand(2, 3, 32, 32) * 2}, ValueError, ["image", "[0, 1]"]),
    ({"image": (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)}, TypeError, ["float", "255"]),
    ({"image": None}, TypeError, ["image is required"]),
    ({"instructions": ["make it blue", ""]}, ValueError, ["instructions", "empty"]),
    ({"instructions": ["make it blue", "draw a cat"]}, ValueError, ["item 1", "recolour"]),
    ({"instructions": ["what colour is it?"] * 2}, ValueError, ["question", "recolour"]),
    ({"instructions": ["make it blue"] * 3}, ValueError, ["equal numbers", "3 instructions",
                                                         "2 pictures"]),
    ({"instructions": []}, ValueError, ["non-empty"]),
    ({"instructions": "make it pink"}, ValueError, ["colour", "recolour"]),
    ({"guidance_scale": -1.0}, ValueError, ["guidance_scale", ">= 0"]),
    ({"image_guidance_scale": float("nan")}, ValueError, ["image_guidance_scale", "finite"]),
    ({"num_inference_steps": 0}, ValueError, ["num_inference_steps"]),
    ({"output_type": "latent"}, ValueError, ["output_type", "'pt'"]),
    ({"generator": 3}, TypeError, ["generator"]),
]


@pytest.mark.parametrize("kwargs,error,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_calls_are_answered_clearly(pipe, kwargs, error, words):
    call = {"instructions": ["make it blue", "move it to the top left"],
            "image": torch.rand(2, 3, 32, 32, generator=gen(1)), **kwargs}
    with pytest.raises(error) as info:
        pipe(call.pop("instructions"), output_type=call.pop("output_type", "pt"), **call)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("text", ["draw a cat", "what colour is it?", "is it red", "a red circle",
                                  "add a blue square", "remove it", "undo", "make it pink",
                                  "tell me a joke"])
def test_what_is_not_an_edit_is_refused(text):
    with pytest.raises(ValueError, match="recolour"):
        ie.read_instruction(text)


@pytest.mark.parametrize("wording", ew.WORDINGS)
def test_every_instruction_reads_as_its_request(wording):
    bank = ew.instruction_bank(48, seed=0, wording=wording)
    wrong = [(r, t) for r, texts in bank.items() for t in texts if ie.read_instruction(t) != r]
    assert not wrong, wrong[:5]


# ---- the triplets ---------------------------------------------------------------------------
def test_triplets_have_the_asked_change_and_nothing_else(trip):
    assert trip["sources"].shape == trip["targets"].shape == (60, 3, 32, 32)
    kinds = {r.kind for r in trip["requests"]}
    assert kinds == set(ew.EDIT_KINDS)
    for i, (req, s, t) in enumerate(zip(trip["requests"], trip["source_specs"],
                                        trip["target_specs"])):
        src, tgt = trip["sources"][i], trip["targets"][i]
        changed = [a for a in shapes.ATTRIBUTES if getattr(s, a) != getattr(t, a)]
        assert t == req.apply(s)
        if req.kind == "keep":
            assert changed == [] and torch.equal(src, tgt)
            continue
        assert set(changed) <= ({"row", "col"} if req.kind == "place" else {req.kind})
        assert changed, "an edit must change something"
        cover_s, cover_t = src.amax(0) > 0, tgt.amax(0) > 0  # [32, 32]
        if req.kind == "color":  # the same pixels covered, another colour
            assert torch.equal(cover_s, cover_t) and not torch.allclose(src, tgt)
        elif req.kind == "place":  # the same object, shifted by whole cells
            dy = 9 * (shapes.ROWS.index(t.row) - shapes.ROWS.index(s.row))
            dx = 9 * (shapes.COLS.index(t.col) - shapes.COLS.index(s.col))
            torch.testing.assert_close(torch.roll(src, (dy, dx), (1, 2)), tgt, atol=1e-5, rtol=0)
        elif req.kind == "size":
            width = lambda c: int(c.any(0).sum())  # noqa: E731
            assert (width(cover_t) > width(cover_s)) == (t.size == "large")


def test_the_judge_reads_sources_and_targets_as_their_specs(trip):
    from course_lib.judges import score_shapes

    assert score_shapes(trip["sources"], trip["source_specs"])["all"] == 1.0
    assert score_shapes(trip["targets"], trip["target_specs"])["all"] == 1.0


def test_triplets_are_reproducible_and_kinds_can_be_given():
    a, b = ew.make_triplets(5, seed=9), ew.make_triplets(5, seed=9)
    assert a["instructions"] == b["instructions"] and torch.equal(a["targets"], b["targets"])
    ev = ew.evaluation_triplets(per_kind=2, wording="heldout")
    assert [r.kind for r in ev["requests"]] == [k for k in ew.EDIT_KINDS for _ in range(2)]
    with pytest.raises(ValueError, match="wording"):
        ew.make_triplets(2, wording="unseen")


# ---- the held-out wording -------------------------------------------------------------------
def test_heldout_wording_shares_no_sentence_form_or_synonym_with_the_seen_one():
    seen, held = ew.TEMPLATES["seen"], ew.TEMPLATES["heldout"]
    for kind in ew.EDIT_KINDS:
        assert not set(seen[kind]) & set(held[kind]), kind
    for size in ("small", "large"):
        assert not set(ew.COMPARATIVES["seen"][size]) & set(ew.COMPARATIVES["heldout"][size])
    vs, vh = ew.value_words("seen"), ew.value_words("heldout")
    canonical = set(shapes.canonical_vocabulary())
    for attr in vs:
        for value in vs[attr]:
            assert vh[attr][value], (attr, value)
            assert not set(vs[attr][value]) & set(vh[attr][value]), (attr, value)
            assert not set(vh[attr][value]) & canonical, (attr, value)
    bank_s = {t for ts in ew.instruction_bank(48, wording="seen").values() for t in ts}
    bank_h = {t for ts in ew.instruction_bank(48, wording="heldout").values() for t in ts}
    assert bank_s and bank_h and not bank_s & bank_h
    sets = ie.evaluation_sets(per_kind=3)
    assert not set(sets["heldout wording"]["instructions"]) & bank_s


def test_heldout_instructions_use_heldout_templates():
    rng = np.random.default_rng(0)
    forms = [re.escape(f).replace(r"\{value\}", ".+") for forms in
             ew.TEMPLATES["heldout"].values() for f in forms]
    forms += [re.escape(c) for cs in ew.COMPARATIVES["heldout"].values() for c in cs]
    for kind in ew.EDIT_KINDS:
        for req in ew.requests_for(kind):
            text = ew.instruction(req, rng, "heldout")
            assert any(re.fullmatch(f, text.replace(" an ", " a ")) for f in forms), text


# ---- training ---------------------------------------------------------------------------------
def test_drop_conditions_drops_each_five_percent():
    no_text, no_image = ie.drop_conditions(200_000, 0.05, 0.05, 0.05, gen(0))
    for share, want in ((no_text & ~no_image, 0.05), (no_image & ~no_text, 0.05),
                        (no_text & no_image, 0.05)):
        assert abs(share.float().mean().item() - want) < 0.003
    with pytest.raises(ValueError, match="sum to at most 1"):
        ie.drop_conditions(4, 0.5, 0.5, 0.5)


def test_a_few_training_steps_run():
    model, hist, hp = ie.train_instruct_edit(TINY, steps=2, n_train=16, per_request=1,
                                             batch_size=8, progress=False, device="cpu")
    assert hist.steps == 2 and all(np.isfinite(hist.losses))
    assert model.unet.config.in_channels == 32 and model.unet.config.out_channels == 12  # 3+3+2, x4
    with pytest.raises(ValueError, match="allowed"):
        ie.InstructTrainConfig.from_dict({"caption_drop": 0.1})


def test_registered_with_its_chapter():
    assert "course_lib.instruct_edit" in pretrained.ENTRY_MODULES
    e = pretrained.entry("shapes-edit")
    assert (e.chapter, e.role, e.domain) == ("11", "generator", "shapes")


# ---- reading first: the plainest words ------------------------------------------------------
@pytest.mark.parametrize("wording", ew.WORDINGS)
def test_rewrite_gives_the_plain_wording_of_the_same_request(wording):
    bank = ew.instruction_bank(48, seed=0, wording=wording)
    for request, texts in bank.items():
        plain = ew.plain_instruction(request)
        assert ie.read_instruction(plain) == request
        for t in texts:
            assert ie.rewrite_instruction(t) == plain, (t, request)
    # a move that names only a side keeps its words: its cell depends on the picture
    assert ie.rewrite_instruction("move it left") == "move it left"
    assert ie.rewrite_instruction("could you repaint it scarlet") == "make it red"
    with pytest.raises(ValueError, match="recolour"):
        ie.rewrite_instruction("draw a cat")


def test_the_pipeline_reads_the_rewritten_words(pipe, trip):
    src = trip["sources"][:2]
    texts = ["could you repaint it scarlet", "i'd like a globe there instead"]
    plain = ["make it red", "turn it into a circle"]
    got = pipe(texts, image=src, generator=gen(4), output_type="pt").images
    want = pipe(plain, image=src, generator=gen(4), output_type="pt", rewrite=False).images
    raw = pipe(texts, image=src, generator=gen(4), output_type="pt", rewrite=False).images
    assert pipe.default_rewrite is True
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, raw)
    with pytest.raises(TypeError, match="True or False"):
        pipe(texts, image=src, output_type="pt", rewrite="yes")


def test_position_channels_reach_the_unet_the_same_way_in_training_and_sampling():
    torch.manual_seed(0)
    m = ie.InstructEditModel({**TINY, "position_channels": 2}).eval()
    assert m.unet.config.in_channels == 32  # (3 + 3 + 2) * 2 * 2
    p = ie.make_pipeline(m)
    x, src = torch.randn(2, 3, 32, 32, generator=gen(6)), torch.rand(2, 3, 32, 32, generator=gen(7))
    t = torch.tensor([400, 400])
    with torch.no_grad():
        states, pooled = p.encode_prompt(["make it red", "make it blue"])
        a = m.denoise(x, t, states, pooled, src)
        fold = torch.nn.functional.pixel_unshuffle
        b = p.network(fold(x, 2), t, (states, pooled, fold(src, 2)))
    torch.testing.assert_close(a, torch.nn.functional.pixel_shuffle(b, 2))
    grid = ie.position_grid(1, 32)
    assert grid[0, 0, 0, 0] == -1 and grid[0, 0, 0, -1] == 1 and grid[0, 1, -1, 0] == 1
    with pytest.raises(ValueError, match="0 or 2"):
        ie.InstructEditConfig.from_dict({"position_channels": 3})


@pytest.mark.parametrize("text,kind,value", [
    ("could you make it red?", "color", "red"),            # a polite request, not a question
    ("can you turn it into a box", "shape", "square"),
    ("recolour the triangle to orange", "color", "orange"),  # the last value named is the new one
    ("turn the red square into a triangle", "shape", "triangle"),
    ("move it to the upper right", "place", ("top", "right")),  # two side words, one cell
    ("move it to the middle left", "place", ("middle", "left")),
    ("relocate it to the top-left", "place", ("top", "left")),
    ("move it to the centre", "place", ("middle", "center")),
    ("put it up high, in the middle", "place", ("top", "center")),
    ("move it left", "place", None),                         # the row stays the picture's
    ("move it up and to the right", "place", None),
])
def test_free_wordings_read_as_their_edit(text, kind, value):
    assert ie.read_instruction(text) == ew.EditRequest(kind, value)


@pytest.mark.parametrize("text", ["can it be green?", "is it red?", "could it be a circle?"])
def test_questions_are_still_refused(text):
    with pytest.raises(ValueError, match="question"):
        ie.read_instruction(text)
