"""Checkpoints: every shipped file matches its hash, error paths say what to do, judges meet targets."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from course_lib import pretrained
from course_lib.data import shapes, mnist
from course_lib import judges


def test_every_shipped_checkpoint_verifies():
    manifest = pretrained.read_manifest()["models"]
    assert {"shapes-judge", "mnist-classifier"} <= set(manifest)
    for name, rec in manifest.items():
        assert pretrained.verify(name)["sha256"] == rec["sha256"]
        for key in ("command", "train_seconds", "quality", "config", "trained_on"):
            assert key in rec, (name, key)
        assert rec["command"].startswith("python -m course_lib.pretrained train ")
        assert name in pretrained.known()


def test_unknown_name_lists_known_ones():
    with pytest.raises(pretrained.CheckpointError) as e:
        pretrained.load("shapes-jugde")
    assert "shapes-jugde" in str(e.value) and "shapes-judge" in str(e.value) and "mnist-classifier" in str(e.value)


@pytest.fixture
def scratch_checkpoints(tmp_path, monkeypatch):
    src = pretrained.checkpoint_dir()
    dst = tmp_path / "checkpoints"
    dst.mkdir()
    shutil.copy(src / "manifest.json", dst / "manifest.json")
    shutil.copy(src / "shapes-judge.safetensors", dst / "shapes-judge.safetensors")
    monkeypatch.setenv("COURSE_CHECKPOINTS", str(dst))
    return dst


def test_hash_mismatch_is_refused(scratch_checkpoints):
    path = scratch_checkpoints / "shapes-judge.safetensors"
    assert isinstance(pretrained.load("shapes-judge", "cpu"), judges.ShapesJudge)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pretrained.CheckpointError) as e:
        pretrained.load("shapes-judge", "cpu")
    msg = str(e.value)
    assert "sha256 mismatch" in msg and "python -m course_lib.pretrained train shapes-judge" in msg
    env = dict(os.environ, COURSE_CHECKPOINTS=str(scratch_checkpoints))
    res = subprocess.run([sys.executable, "-m", "course_lib.pretrained", "verify"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "[BAD]  shapes-judge" in res.stdout


def test_missing_file_says_how_to_reproduce(scratch_checkpoints):
    (scratch_checkpoints / "shapes-judge.safetensors").unlink()
    with pytest.raises(pretrained.CheckpointError, match="missing.*train shapes-judge"):
        pretrained.load("shapes-judge", "cpu")


class _Tiny(torch.nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.lin = torch.nn.Linear(n, 2)


def test_registered_but_unshipped_then_train_save_load(scratch_checkpoints):
    def train(seed=0, quick=False):
        torch.manual_seed(seed)
        return pretrained.TrainResult(_Tiny(3), {"n": 3}, {"score": 1.0})

    pretrained.register("test-tiny", role="generator", domain="digits", build=lambda cfg: _Tiny(**cfg),
                        train=train)
    try:
        with pytest.raises(pretrained.CheckpointError, match="not shipped yet"):
            pretrained.load("test-tiny")
        before = torch.random.get_rng_state()
        rec = pretrained.train("test-tiny", seed=1)
        assert torch.equal(torch.random.get_rng_state(), before), "training reseeded the caller's generator"
        assert rec["quality"] == {"score": 1.0} and rec["parameters"] == 8 and rec["budget"] == "full"
        assert (rec["module"], rec["role"], rec["domain"]) == (__name__, "generator", "digits")
        again = json.loads((scratch_checkpoints / "manifest.json").read_text())["models"]["test-tiny"]
        assert again["sha256"] == rec["sha256"] == pretrained.sha256(scratch_checkpoints / "test-tiny.safetensors")
        torch.manual_seed(1)
        want = _Tiny(3).lin.weight
        got = pretrained.load("test-tiny", "cpu").lin.weight
        assert torch.equal(got, want)
    finally:
        pretrained._REGISTRY.pop("test-tiny", None)


def test_shapes_judge_meets_target_live():
    images, caps = shapes.sample(1500, seed=424242, split="all")
    res = judges.score_shapes(images, caps, judges.load_shapes_judge("cpu"))
    for attr in shapes.ATTRIBUTES:
        assert res[attr] >= 0.995, (attr, res[attr])
    # and it is a real judge: captions that do not match the pictures score low
    wrong = caps[1:] + caps[:1]
    assert judges.score_shapes(images, wrong, judges.load_shapes_judge("cpu"))["all"] < 0.1


def test_mnist_classifier_meets_target_live():
    x, y = mnist.load_mnist("test")
    res = judges.score_digits(x, y, judges.load_mnist_classifier("cpu"))
    assert res["accuracy"] >= 0.98
    assert res["hist_entropy"] > 0.99 * torch.log(torch.tensor(10.0)).item()
    # a collapsed "generator" (one digit repeated) is seen as collapsed
    collapsed = judges.score_digits(x[y == 3][:50], judge=judges.load_mnist_classifier("cpu"))
    assert collapsed["hist_entropy"] < 0.5
    one_class = judges.score_digits(x[y == 3][:1], judge=judges.load_mnist_classifier("cpu"))
    assert one_class["hist_entropy"] == 0.0 and math.copysign(1.0, one_class["hist_entropy"]) == 1.0


def test_quick_mode_never_replaces_a_full_recipe_checkpoint(scratch_checkpoints, tmp_path):
    calls = []

    def train(seed=0, quick=False):
        calls.append(quick)
        steps = 2 if quick else 50
        return pretrained.TrainResult(_Tiny(3), {"n": 3}, {"steps": steps})

    pretrained.register("test-tiny", role="generator", domain="digits", build=lambda cfg: _Tiny(**cfg),
                        train=train)
    try:
        full = pretrained.train("test-tiny", quick=False)
        assert full["budget"] == "full" and full["command"].endswith("--seed 0")
        with pytest.raises(pretrained.CheckpointError, match="full-recipe checkpoint"):
            pretrained.train("test-tiny", quick=True)
        assert calls == [False]                          # refused before any training
        scratch = tmp_path / "scratch"
        rec = pretrained.train("test-tiny", quick=True, directory=scratch)
        assert rec["budget"] == "quick" and rec["quality"] == {"steps": 2} and rec["command"].endswith("--quick")
        assert (scratch / "test-tiny.safetensors").exists()
        kept = pretrained.read_manifest(scratch_checkpoints)["models"]["test-tiny"]
        assert kept["sha256"] == full["sha256"] and kept["budget"] == "full"
    finally:
        pretrained._REGISTRY.pop("test-tiny", None)


def test_quick_mode_command_line_refuses_shipped_checkpoint(scratch_checkpoints):
    env = dict(os.environ, COURSE_CHECKPOINTS=str(scratch_checkpoints), COURSE_QUICK="1")
    res = subprocess.run([sys.executable, "-m", "course_lib.pretrained", "train", "shapes-judge"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "does not replace" in res.stderr and "--out" in res.stderr


def test_run_recipe_times_and_records():
    from course_lib.training import History

    def train():
        h = History(steps=7, seconds=0.5)
        return _Tiny(3), h, {"lr": 0.1}

    res = pretrained.run_recipe(train, lambda m: {"params": sum(p.numel() for p in m.parameters())},
                                config={"n": 3}, notes=lambda h, extra: f"{h.steps} steps at lr {extra['lr']}")
    assert res.quality["params"] == 8 and res.quality["train_steps"] == 7
    assert res.quality["train_loop_seconds"] == 0.5 and res.quality["train_seconds"] >= 0
    assert res.notes == "7 steps at lr 0.1" and res.config == {"n": 3}


def test_every_entry_says_what_it_is():
    """Each shipped model declares its role and domain, and the manifest names the module that
    registers it (the one ``load`` imports first)."""
    shipped = pretrained.read_manifest()["models"]
    judges_ = {e.name for e in pretrained.entries(role="judge")}
    assert {"shapes-judge", "mnist-classifier"} <= judges_
    generators = {e.name for e in pretrained.entries(role="generator")}
    assert {"ddpm-mnist", "flow-mnist", "shapes-t2i", "shapes-gpt"} <= generators
    assert not generators & judges_ and "shapes-vq" not in generators
    assert {e.name for e in pretrained.entries(domain="digits")} >= {"dcgan-mnist", "mnist-classifier"}
    for name, rec in shipped.items():
        e = pretrained.entry(name)
        assert (rec["module"], rec["role"], rec["domain"]) == (e.module, e.role, e.domain), name
    assert pretrained.entry("shapes-t2i-mpnet").module == "course_lib.ladder"
    assert pretrained.entry("shapes-gpt").module == "course_lib.models.token_training"
    with pytest.raises(ValueError, match="role"):
        pretrained.register("test-bad", role="painter", domain="digits", build=_Tiny, train=None)
    with pytest.raises(ValueError, match="domain"):
        pretrained.entries(domain="faces")
