"""Chapter 09, scale-out: chapter 05's training recipe under `accelerate launch` (one CPU process) is
the same recipe: same losses step for step as `train_text_to_image`, and a loadable checkpoint."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from course_lib.models import text_to_image as t2i

ROOT = Path(__file__).resolve().parents[1]


def test_accelerate_launch_runs_the_chapter_05_recipe_unchanged(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "scripts" / "train_accelerate.py"),
           "--steps", "2", "--n-train", "128", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["num_processes"] == 1 and metrics["device"] == "cpu"
    assert all(math.isfinite(v) for v in metrics["losses"])
    assert metrics["hyper_parameters"]["lr"] == t2i.TrainConfig().lr
    _, hist, _ = t2i.train_text_to_image(steps=2, n_train=128, device="cpu", progress=False)
    assert metrics["losses"] == hist.losses, "the Accelerate run must be the same recipe, step for step"
    model = t2i.build(None)
    model.load_state_dict(load_file(str(out / "shapes-t2i-accelerate.safetensors")))
    assert all(torch.isfinite(p).all() for p in model.parameters())
