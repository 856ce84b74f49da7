"""Chapter 06: the tiny CLIP (contrastive loss, towers, retrieval)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import pretrained
from course_lib.data import shapes
from course_lib.models import clip


def _reference_info_nce(img, txt, scale):
    img, txt = img / img.norm(dim=1, keepdim=True), txt / txt.norm(dim=1, keepdim=True)
    n = len(img)
    total = 0.0
    for i in range(n):
        sims_i = torch.stack([scale * img[i] @ txt[j] for j in range(n)])      # picture i vs every text
        sims_t = torch.stack([scale * txt[i] @ img[j] for j in range(n)])      # text i vs every picture
        total += -(sims_i[i] - torch.logsumexp(sims_i, 0)) - (sims_t[i] - torch.logsumexp(sims_t, 0))
    return total / (2 * n)


def test_info_nce_matches_reference():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for scale in (1.0, 14.3):
        torch.testing.assert_close(clip.info_nce_loss(img, txt, scale), _reference_info_nce(img, txt, scale),
                                   atol=1e-5, rtol=1e-5)
    # the library's cross-entropy both ways on the similarity matrix
    logits = 3.0 * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).T
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(7)) + F.cross_entropy(logits.T, torch.arange(7)))
    torch.testing.assert_close(clip.info_nce_loss(img, txt, 3.0), ref)


def test_info_nce_prefers_aligned_pairs_and_has_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, generator=g, requires_grad=True)
    aligned = clip.info_nce_loss(x, x.detach(), 20.0)
    shuffled = clip.info_nce_loss(x, x.detach().roll(1, 0), 20.0)
    assert aligned < 0.01 < shuffled
    shuffled.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert clip.info_nce_loss(torch.ones(4, 3), torch.ones(4, 3), 10.0).item() == pytest.approx(np.log(4), abs=1e-5)


def test_train_clip_takes_the_loss_it_is_given():
    calls = []

    def loss(image_emb, text_emb, logit_scale):
        calls.append((image_emb.shape, text_emb.shape))
        return clip.info_nce_loss(image_emb, text_emb, logit_scale)

    clip.train_clip(steps=4, batch_size=8, renders_per_caption=1, progress=False,
                    contrastive_loss=loss, device="cpu")
    assert calls == [((8, 64), (8, 64))] * 4
    with pytest.raises(TypeError, match="contrastive_loss must be a function"):
        clip.train_clip(steps=2, contrastive_loss="info_nce")


def test_tiny_clip_shapes_and_retrieval_bookkeeping():
    torch.manual_seed(0)
    model = clip.TinyCLIP()
    images, caps = shapes.sample(6, seed=3, split="all")
    caps = list(dict.fromkeys(caps))
    images = images[:len(caps)]
    assert model.encode_images(images).shape == (len(caps), 64)
    assert torch.allclose(model.encode_texts(caps).norm(dim=1), torch.ones(len(caps)))
    loss = model(images, caps)
    assert loss.ndim == 0 and torch.isfinite(loss)
    r = clip.retrieval_accuracy(model, images, caps)
    assert 0 <= r["text_to_image_top1"] <= 1 and r["n"] == len(caps)
    s = clip.clip_score(images, caps, model=model, reduction="none")
    assert s.shape == (len(caps),) and (s >= 0).all() and (s <= 100).all()


def _shipped(name):
    return name in pretrained.read_manifest()["models"]


@pytest.mark.skipif(not _shipped("shapes-clip"), reason="shapes-clip not shipped yet")
def test_shipped_clip_retrieves():
    model = pretrained.load("shapes-clip", "cpu")
    specs = shapes.all_specs("all")[::9]
    r = clip.retrieval_accuracy(model, shapes.render(specs, 5), [shapes.caption(s) for s in specs])
    assert r["text_to_image_top1"] >= 0.9
