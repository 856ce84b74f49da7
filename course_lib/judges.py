"""The course's judges: classifiers that check generated pictures (introduced in chapter 00, used
by every generating chapter and by chapter 07's scoreboard).

* ``shapes-judge``: reads size, color, shape, row and column off a Shapes picture.
* ``mnist-classifier``: reads the digit off an MNIST-like picture.

Later chapters generate; these judge. Their penultimate layers (``features``) are the domain
feature networks chapter 07 uses for FID, KID and precision/recall.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import mnist, shapes
from .pretrained import TrainResult, register
from .runtime import get_device
from .training import fit, make_step, infinite_loader


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
class ShapesJudge(nn.Module):
    """Small CNN with one head per attribute. Input [n, 3, 32, 32] in [0, 1]."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),  # [n, w, 32, 32]
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.ReLU(),  # [n, w, 16, 16]
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # [n, 2w, 8, 8]
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),  # [n, 2w, 4, 4]
            nn.Flatten(),  # [n, 32w]
            nn.Linear(2 * w * 16, hidden),
            nn.ReLU(),  # [n, hidden]
        )
        self.heads = nn.ModuleDict(
            {a: nn.Linear(hidden, len(shapes.ATTRIBUTE_VALUES[a])) for a in shapes.ATTRIBUTES}
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [n, hidden] (chapter 07's domain feature network)."""
        return self.body(x.clamp(0, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {a: head(h) for a, head in self.heads.items()}  # a -> [n, k_a]

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """LongTensor[n, 5] of predicted attribute indices (``shapes.ATTRIBUTES`` order)."""
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(x), batch_size):
            logits = self(x[i : i + batch_size].to(dev))
            out.append(torch.stack([logits[a].argmax(1) for a in shapes.ATTRIBUTES], 1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(shapes.ATTRIBUTES), dtype=torch.long)

    @torch.no_grad()
    def predict_captions(self, x: torch.Tensor) -> list[str]:
        """The canonical caption the judge reads off each picture."""
        return [
            shapes.caption(
                shapes.ShapeSpec(
                    *(shapes.ATTRIBUTE_VALUES[a][int(i)] for a, i in zip(shapes.ATTRIBUTES, row))
                )
            )
            for row in self.predict(x)
        ]


class MnistClassifier(nn.Module):
    """Small CNN digit classifier. Input [n, 1, 28, 28] in [0, 1]; output logits [n, 10]."""

    def __init__(self, width: int = 16, hidden: int = 128, dropout: float = 0.3):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # [n, w, 14, 14]
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # [n, 2w, 7, 7]
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * w * 49, hidden),
            nn.ReLU(),  # [n, hidden]
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [n, hidden] (chapter 07's domain feature network)."""
        return self.body(x.clamp(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [n, 10]

    @torch.no_grad()
    def probs(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities [n, 10]."""
        dev = next(self.parameters()).device
        out = [
            F.softmax(self(x[i : i + batch_size].to(dev)), 1).cpu()
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, 10)


# --------------------------------------------------------------------------------------------
# Scoring generated pictures
# --------------------------------------------------------------------------------------------
def _as_specs(targets) -> list[shapes.ShapeSpec]:
    return [t if isinstance(t, shapes.ShapeSpec) else shapes.parse_caption(t) for t in targets]


@torch.no_grad()
def score_shapes(images: torch.Tensor, targets, judge: ShapesJudge | None = None) -> dict:
    """How often the judge reads each asked-for attribute off the pictures.

    ``images``: [n, 3, 32, 32] in [0, 1]; ``targets``: captions or :class:`ShapeSpec`. Returns
    ``{"size", "color", "shape", "row", "col"}`` accuracies, ``"all"`` (all five right) and
    ``"correct"``: BoolTensor[n, 5].
    """
    judge = judge if judge is not None else load_shapes_judge()
    want = shapes.spec_labels(_as_specs(targets))  # [n, 5]
    got = judge.eval().predict(images)  # [n, 5]
    correct = got == want
    out = {a: correct[:, i].float().mean().item() for i, a in enumerate(shapes.ATTRIBUTES)}
    out["all"] = correct.all(1).float().mean().item()
    out["correct"] = correct
    return out


@torch.no_grad()
def score_digits(
    images: torch.Tensor, labels: torch.Tensor | None = None, judge: MnistClassifier | None = None
) -> dict:
    """The judge's view of generated digits ([n, 1, 28, 28] in [0, 1]).

    ``mean_top_prob`` (how confidently each looks like some digit), ``histogram`` of predicted
    classes, ``hist_entropy`` (nats; ln 10 = 2.303 is perfectly balanced) and, with ``labels``,
    ``accuracy``.
    """
    judge = judge if judge is not None else load_mnist_classifier()
    p = judge.eval().probs(images)  # [n, 10]
    pred = p.argmax(1)
    hist = torch.bincount(pred, minlength=10).float() / max(1, len(pred))
    nz = hist[hist > 0]
    out = {
        "mean_top_prob": p.max(1).values.mean().item(),
        "histogram": hist.tolist(),
        "hist_entropy": float(-(nz * nz.log()).sum()) + 0.0,  # + 0.0: one class gives 0, not -0
        "predicted": pred,
    }
    if labels is not None:
        out["accuracy"] = (pred == labels.cpu()).float().mean().item()
    return out


_cache: dict = {}


def load_shapes_judge(device=None) -> ShapesJudge:
    """The shipped ``shapes-judge`` (cached per device)."""
    from . import pretrained

    device = device if device is not None else get_device()
    key = ("shapes-judge", str(device))
    if key not in _cache:
        _cache[key] = pretrained.load("shapes-judge", device)
    return _cache[key]


def load_mnist_classifier(device=None) -> MnistClassifier:
    """The shipped ``mnist-classifier`` (cached per device)."""
    from . import pretrained

    device = device if device is not None else get_device()
    key = ("mnist-classifier", str(device))
    if key not in _cache:
        _cache[key] = pretrained.load("mnist-classifier", device)
    return _cache[key]


# --------------------------------------------------------------------------------------------
# Training (what `python -m course_lib.pretrained train NAME` runs)
# --------------------------------------------------------------------------------------------
def add_noise_augmentation(
    x: torch.Tensor, max_sigma: float = 0.12, generator=None
) -> torch.Tensor:
    """Gaussian pixel noise of a random strength per picture, so a judge is not thrown by the grain
    of generated pictures. x: [n, C, H, W] in [0, 1]."""
    sigma = torch.rand(x.shape[0], 1, 1, 1, generator=generator) * max_sigma
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def random_affine(
    x: torch.Tensor,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: tuple = (0.9, 1.1),
    generator=None,
) -> torch.Tensor:
    """A different small rotation/shift/zoom per picture (data augmentation). x: [n, C, H, W]."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
    s = scale[0] + torch.rand(n, generator=generator) * (scale[1] - scale[0])
    t = (torch.rand(n, 2, generator=generator) * 2 - 1) * translate * 2  # grid units span 2
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack(
        [torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1
    )  # [n, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def evaluate_shapes_judge(judge: ShapesJudge, n: int = 3000, seed: int = 10_000) -> dict:
    """Per-attribute accuracy on fresh pictures of every split (seed unseen in training)."""
    images, caps = shapes.sample(n, seed=seed, split="all")
    res = score_shapes(images, caps, judge)
    return {k: round(v, 4) for k, v in res.items() if k != "correct"} | {"n": n, "seed": seed}


def train_shapes_judge(
    seed: int = 0, quick: bool = False, steps: int | None = None, n_train: int | None = None
) -> TrainResult:
    device = get_device()
    steps = steps or (30 if quick else 2500)
    n_train = n_train or (512 if quick else 20_000)
    ds = shapes.ShapesDataset(n_train, seed=seed + 1, split="all", with_labels=True)
    loader = infinite_loader(torch.utils.data.TensorDataset(ds.images, ds.labels), 128, seed=seed)
    model = ShapesJudge().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)

    def loss_fn(m, batch):
        x, y = batch  # [b, 3, 32, 32], [b, 5]
        x = add_noise_augmentation(x, generator=g).to(device)
        logits = m(x)
        return sum(
            F.cross_entropy(logits[a], y[:, i].to(device)) for i, a in enumerate(shapes.ATTRIBUTES)
        )

    fit(make_step(model, loss_fn, opt, scheduler=sched), loader, steps=steps, desc="shapes-judge")
    model.eval()
    return TrainResult(
        model,
        {"width": 32, "hidden": 128},
        evaluate_shapes_judge(model),
        notes=f"{steps} steps, batch 128, {n_train} training pictures + pixel noise",
    )


def evaluate_mnist_classifier(model: MnistClassifier) -> dict:
    x, y = mnist.load_mnist("test")
    acc = (model.eval().probs(x).argmax(1) == y).float().mean().item()
    return {"test_accuracy": round(acc, 4), "n": len(y)}


def train_mnist_classifier(
    seed: int = 0, quick: bool = False, steps: int | None = None
) -> TrainResult:
    device = get_device()
    steps = steps or (30 if quick else 1500)
    x, y = mnist.load_mnist("train")
    loader = infinite_loader(torch.utils.data.TensorDataset(x, y), 128, seed=seed)
    model = MnistClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)

    def loss_fn(m, batch):
        xb, yb = batch
        xb = random_affine(xb, generator=g).to(device)
        # no label smoothing: this judge's confidence is itself a metric (mean top-class
        # probability of generated digits), and smoothing would cap it below 1 even on real digits
        return F.cross_entropy(m(xb), yb.to(device))

    fit(
        make_step(model, loss_fn, opt, scheduler=sched),
        loader,
        steps=steps,
        desc="mnist-classifier",
    )
    model.eval()
    return TrainResult(
        model,
        {"width": 16, "hidden": 128},
        evaluate_mnist_classifier(model),
        notes=f"{steps} steps, batch 128, random affine augmentation",
    )


register(
    "shapes-judge",
    role="judge",
    domain="shapes",
    build=lambda cfg: ShapesJudge(**cfg),
    train=train_shapes_judge,
    evaluate=evaluate_shapes_judge,
    chapter="00",
    description="Shapes attribute classifier (size, color, shape, row, col)",
)
register(
    "mnist-classifier",
    role="judge",
    domain="digits",
    build=lambda cfg: MnistClassifier(**cfg),
    train=train_mnist_classifier,
    evaluate=evaluate_mnist_classifier,
    chapter="00",
    description="MNIST digit classifier",
)
