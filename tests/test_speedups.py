"""Chapter 09: the arithmetic variants keep the pictures (or say how much they change them), never
change the original pipeline, and a failing variant is reported instead of crashing the table."""
import pytest
import torch
import torch.nn as nn

from course_lib import pretrained, samplers, speedups
from course_lib.data import shapes

CAPS = shapes.all_captions("train")[:3]


@pytest.fixture(scope="module")
def pipe():
    return pretrained.load("shapes-t2i", "cpu")


@pytest.fixture(scope="module")
def reference(pipe):
    return samplers.sample_shapes(pipe, CAPS, None, 2, seed=0)


@pytest.mark.parametrize("name, atol", [("fp32", 0.0), ("channels-last", 1e-4), ("bf16-autocast", 0.15),
                                        ("int8-dynamic", 0.3)])
def test_variant_keeps_the_pictures_close(pipe, reference, name, atol):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    p, ctx, note = speedups.apply_variant(pipe, name)
    with ctx():
        got = samplers.sample_shapes(p, CAPS, None, 2, seed=0)
    assert got.shape == reference.shape
    assert (got - reference).abs().max() <= atol + 1e-6, name
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the original pipeline must not change"


def test_int8_variant_really_quantises_the_linear_layers(pipe):
    p, _, note = speedups.apply_variant(pipe, "int8-dynamic")
    kinds = {type(m).__module__ for m in p.unet.modules() if type(m).__name__ == "Linear"}
    assert all("quantized" in k for k in kinds), kinds
    assert "Linear layers" in note


def test_prune_zeroes_the_asked_fraction_and_the_variant_reports_it(pipe):
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 4))
    assert abs(speedups.prune_l1(m, 0.3) - 0.3) < 0.02
    assert not any("orig" in n for n, _ in m.named_parameters()), "pruning must be made permanent"
    p, _, note = speedups.apply_variant(pipe, "prune-50%")
    w = torch.cat([mod.weight.flatten() for mod in p.unet.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))])
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01 and "50%" in note


def test_a_failing_variant_is_reported_not_raised(pipe, monkeypatch):
    def broken(self, *a, **k):
        raise RuntimeError("no C++ compiler found\nmore lines")
    monkeypatch.setattr(nn.Module, "compile", broken)
    rows = speedups.measure_variants(pipe, CAPS[:2], variants=["fp32", "compile"], steps=2, repeats=1,
                                     progress=False)
    assert [r["variant"] for r in rows] == ["fp32", "compile"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["delta_points"] == 0.0 and rows[0]["error"] is None
    assert rows[0]["speedup_low"] == rows[0]["speedup_high"] == 1.0  # fp32 against itself, per round
    assert rows[1]["error"] == "RuntimeError: no C++ compiler found" and "ms_per_picture" not in rows[1]
    assert "FAILED: RuntimeError: no C++ compiler found" in speedups.format_table(rows)
    with pytest.raises(ValueError):
        speedups.apply_variant(pipe, "fp8")


def test_other_model_rows_measure_a_shipped_pipeline_and_skip_the_rest():
    rows = speedups.other_model_rows(CAPS[:2], names=("shapes-t2i", "no-such-model"), repeats=1,
                                     reference=samplers.reference_set(pretrained.load("shapes-t2i", "cpu"), CAPS[:2]))
    assert rows[0]["name"] == "shapes-t2i" and rows[0]["ms_per_picture"] > 0 and 0 <= rows[0]["accuracy"] <= 1
    assert "kid" in rows[0] and "20 steps" in rows[0]["note"]
    assert rows[1] == {"name": "no-such-model", "error": "not registered"}
    table = speedups.format_combined(speedups.combined_rows(
        {"sampler": "ddpm", "steps": 1000, "ms_per_picture": 1000.0, "accuracy": 1.0}, other_rows=rows))
    assert "skipped: not registered" in table and "shapes-t2i" in table


def test_int8_weights_per_output_channel_match_torch():
    import warnings

    w = torch.randn(16, 12, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 16)[:, None]
    w[5] = 0                                                          # an all-zero row stays zero
    q, scale = speedups.quantize_weight_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (16,)
    assert int(q.abs().max()) == 127 and torch.all(q[5] == 0) and torch.isfinite(scale).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_channel(w, scale, torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(ref.int_repr(), q)
    back = speedups.dequantize_weight_int8(q, scale)
    assert ((back - w).abs() <= scale[:, None] / 2 + 1e-7).all()      # at most half a step off
    with pytest.raises(TypeError):
        speedups.quantize_weight_int8(torch.ones(3, 4, 5))


def test_cuda_home_notice_is_hidden_only_inside():
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            msgs.append(record.getMessage())

    # a handler on the logger itself: torch 2.3 keeps its loggers from reaching the root (caplog's)
    msgs, keep = [], Keep(logging.WARNING)
    log = logging.getLogger("torch.utils.cpp_extension")
    log.addHandler(keep)
    try:
        with speedups._no_cuda_home_notice():
            log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
            log.warning("something else")
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/x")
    finally:
        log.removeHandler(keep)
    assert msgs == ["something else", "No CUDA runtime is found, using CUDA_HOME='/x'"]


def test_combined_rows_take_a_named_baseline():
    base = {"name": "shapes-t2i", "ms_per_picture": 10.0, "accuracy": 1.0, "note": "its defaults"}
    other = {"name": "shapes-t2i-fast", "ms_per_picture": 2.0, "accuracy": 1.0}
    rows = speedups.combined_rows(base, other_rows=[base, other])
    assert [r["name"] for r in rows] == ["shapes-t2i (baseline)", "shapes-t2i-fast"]
    assert rows[0]["speedup"] == 1.0 and rows[1]["speedup"] == 5.0
