"""Chapter 03's language models and the shipped ``shapes-captioner``."""
import math

import pytest
import torch

from course_lib import pretrained
from course_lib.data import shapes
from course_lib.models import transformer as tfm



@pytest.fixture(scope="module")
def tok():
    return tfm.paraphrase_tokenizer()


def test_corpus_is_reproducible_and_tokenizable(tok):
    a, b = tfm.caption_corpus(300, seed=3), tfm.caption_corpus(300, seed=3)
    assert a == b and a != tfm.caption_corpus(300, seed=4)
    canonical = set(shapes.all_captions("all"))
    frac = sum(t not in canonical for t in a) / len(a)
    assert 0.5 < frac < 0.9                                # mostly paraphrases, some canonical
    enc = tok(a)                                           # no unknown word, nothing truncated
    assert (enc["attention_mask"][:, -1] == 0).all()
    held = tfm.caption_corpus(200, seed=3, split="heldout", paraphrased=0.0)
    assert all(shapes.in_split(shapes.parse_caption(t), "heldout") for t in held)


@pytest.mark.parametrize("make", [lambda v: tfm.TinyGPT(v, d_model=32, n_heads=4, n_layers=2),
                                  lambda v: tfm.LSTMLanguageModel(v, d_emb=16, hidden=32)])
def test_language_models_are_causal(tok, make):
    torch.manual_seed(0)
    model = make(tok.vocab_size).eval()
    enc = tok(["a small red circle in the top left", "there is a big box on the right side"])
    ids = enc["input_ids"]
    logits = model(ids, enc["attention_mask"])
    assert logits.shape == (2, tok.max_length, tok.vocab_size)
    ids2 = ids.clone()
    ids2[:, 5:] = tok.stoi["ball"]
    logits2 = model(ids2)
    torch.testing.assert_close(logits[:, :5], logits2[:, :5], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits[:, 5:], logits2[:, 5:])


def test_gpt_attention_maps_are_causal_and_reject_long_input(tok):
    torch.manual_seed(0)
    gpt = tfm.TinyGPT(tok.vocab_size, d_model=32, n_heads=2, n_layers=3, max_len=16).eval()
    enc = tok(["a big violet ball at the top"])
    gpt(enc["input_ids"], enc["attention_mask"], keep_weights=True)
    maps = gpt.attention_maps()
    assert len(maps) == 3 and maps[0].shape == (1, 2, 16, 16)
    assert torch.all(maps[0].triu(1) == 0)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(1, 2, 16))
    with pytest.raises(ValueError):
        gpt(torch.zeros(1, 17, dtype=torch.long))


def test_lm_loss_ignores_padding_and_training_lowers_perplexity(tok):
    torch.manual_seed(0)
    gpt = tfm.TinyGPT(tok.vocab_size, d_model=32, n_heads=4, n_layers=1, dropout=0.0)
    texts = tfm.caption_corpus(256, seed=0)
    enc = tok(texts[:4])
    short = tok(texts[:4], max_length=15)
    gpt.eval()
    torch.testing.assert_close(tfm.lm_loss(gpt, enc["input_ids"], enc["attention_mask"]),
                               tfm.lm_loss(gpt, short["input_ids"], short["attention_mask"]))
    before = tfm.perplexity(gpt, tok, texts)
    assert before > 10                                     # roughly the vocabulary size untrained
    hist = tfm.train_language_model(gpt, tok, texts, steps=40, batch_size=32, progress=False)
    assert hist.steps == 40 and len(hist.losses) == 40
    assert tfm.perplexity(gpt, tok, texts) < before / 2


def test_generate_is_reproducible(tok):
    torch.manual_seed(0)
    lstm = tfm.LSTMLanguageModel(tok.vocab_size, d_emb=16, hidden=32)
    a = tfm.generate(lstm, tok, 4, generator=torch.Generator().manual_seed(1))
    b = tfm.generate(lstm, tok, 4, generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) == 4 and all(isinstance(t, str) for t in a)
    greedy = tfm.generate(lstm, tok, 2, temperature=0, prefix="a big")
    assert greedy[0] == greedy[1] and greedy[0].startswith("a big")


def test_captioner_contract_untrained():
    torch.manual_seed(0)
    cap = tfm.ShapesCaptioner(**tfm.CAPTIONER_CONFIG).eval()
    images, caps = shapes.sample(3, seed=0)
    out = cap.caption(images)
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(t, str) for t in out)
    enc = cap.tokenizer(caps)
    assert cap(images, enc["input_ids"]).shape == (3, cap.max_len, cap.tokenizer.vocab_size)
    cap.generate_ids(images, keep_weights=True)
    maps = cap.attention_maps()
    assert maps["cross"][0].shape[-1] == 64 and maps["cross"][0].shape[:2] == (3, 4)


def test_caption_accuracy_and_confusions():
    t = ["a small red circle in the top left", "a large orange circle at the bottom"]
    acc = tfm.caption_accuracy(["a small red circle in the top left", "a large orange square at the bottom"], t)
    assert acc["exact"] == 0.5 and acc["shape"] == 0.5 and acc["color"] == 1.0 and acc["valid"] == 1.0
    acc = tfm.caption_accuracy(["gibberish", "a large orange circle at the bottom"], t)
    assert acc["valid"] == 0.5 and acc["size"] == 0.5
    conf = tfm.heldout_confusions(["a large orange square at the bottom", "nonsense"],
                                ["a large orange circle at the bottom", "a small orange circle at the top"])
    assert conf == {"orange circle": {"orange square": 0.5, "(not a caption)": 0.5}}


def test_shipped_captioner():
    assert "shapes-captioner" in pretrained.known()
    rec = pretrained.info("shapes-captioner")
    q = rec["quality"]
    assert q["exact_match"] >= 0.95 and "heldout_exact_match" in q and "heldout_said" in q
    assert rec["bytes"] < 5e6
    cap = pretrained.load("shapes-captioner", device="cpu")
    images, caps = shapes.sample(300, seed=424_242, split="train")
    pred = cap.caption(images)
    assert all(shapes.parse_caption(p) for p in pred)     # canonical captions
    assert tfm.caption_accuracy(pred, caps)["exact"] >= 0.93


def test_tiny_gpt_takes_the_block_it_is_given(tok):
    """Chapter 03 builds the tiny GPT from the learner's block: any class with the same call."""
    made = []

    class Block(tfm.TransformerBlock):
        def __init__(self, d_model, n_heads, dropout=0.0):
            super().__init__(d_model, n_heads, dropout=dropout)
            made.append(self)

    gpt = tfm.TinyGPT(tok.vocab_size, d_model=16, n_heads=2, n_layers=3, max_len=16, block=Block)
    assert len(made) == 3 and all(isinstance(b, Block) for b in gpt.blocks)
    ids = tok(["a small red circle in the top left"])["input_ids"]
    assert gpt(ids).shape == (1, ids.shape[1], tok.vocab_size)
    with pytest.raises(TypeError):
        tfm.TinyGPT(tok.vocab_size, block="not a block")


def test_decode_gives_corpus_text_back_with_its_commas(tok):
    texts = tfm.caption_corpus(400, seed=5)
    with_comma = [t for t in texts if "," in t]
    assert len(with_comma) > 50                            # the "{where}, a ..." template
    for t in with_comma:
        assert tok.decode(tok.encode(t)) == t, t
    assert tok.decode(tok.encode("in the middle, a big ball")) == "in the middle, a big ball"
    assert all(tok.decode(tok.encode(t)) == t for t in texts)


def test_tiny_gpt_starts_near_a_uniform_guess(tok):
    torch.manual_seed(0)
    gpt = tfm.TinyGPT(tok.vocab_size, d_model=64, n_heads=4, n_layers=2)
    assert abs(gpt.emb.weight.std().item() - 0.02) < 0.005
    assert all(b.mlp[0].bias.abs().max() == 0 for b in gpt.blocks)
    enc = tok(tfm.caption_corpus(64, seed=0))
    first = tfm.lm_loss(gpt, enc["input_ids"], enc["attention_mask"]).item()
    assert abs(first - math.log(tok.vocab_size)) < 0.3     # not tens of nats
