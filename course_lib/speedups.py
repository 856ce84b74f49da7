"""Arithmetic and compilation speed-ups for a small diffusion model, each applied to a copy of a
``ShapesPipeline`` and measured against the fp32 original in the same run (chapter 09).

Variants (:data:`VARIANTS`):

* ``"fp32"``: the baseline, unchanged.
* ``"bf16-autocast"``: ``torch.autocast(device, dtype=torch.bfloat16)`` around sampling:
  convolutions and matrix products in bfloat16, the rest in float32. Fast only where the hardware
  has bf16 units (recent x86 CPUs with AVX512-BF16/AMX, GPUs); elsewhere the conversions cost more
  than they save.
* ``"channels-last"``: the UNet's weights in NHWC memory order (``module.to(memory_format=
  torch.channels_last)``), which some convolution kernels (oneDNN, cuDNN) prefer.
* ``"compile"``: ``torch.compile`` of the UNet (TorchInductor generates fused C++ / Triton kernels).
  On a CPU it needs a C++ compiler and minutes of compile time; a failure is caught and reported.
* ``"int8-dynamic"``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8
  weights, activations quantised on the fly). CPU only. This UNet spends most of its time in
  convolutions, which dynamic quantisation leaves alone.
* ``"prune-50%"``: L1 unstructured pruning of half of every convolution's and linear layer's weights
  (``torch.nn.utils.prune``), made permanent. The tensors stay dense, so the same dense kernels run
  on zeros: unstructured sparsity saves no time; it shows what pruning costs in quality.

:func:`measure_variants` times every variant round-robin (``repeats`` rounds, median), so that a
busy machine slows all of them alike, and judges the pictures of each.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings

import numpy as np
import torch
import torch.nn as nn

from .progress import progress_bar
from .runtime import synchronize
from .training import ms_per_picture

VARIANTS = ("fp32", "bf16-autocast", "channels-last", "compile", "int8-dynamic", "prune-50%")


def prune_l1(module: nn.Module, amount: float = 0.5) -> float:
    """Zero the ``amount`` smallest-magnitude weights of every Conv2d and Linear layer in place
    (``prune.l1_unstructured`` then ``prune.remove``). Returns the fraction of those weights now
    zero."""
    from torch.nn.utils import prune

    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        prune.l1_unstructured(m, "weight", amount=amount)
        prune.remove(m, "weight")
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / max(1, total)


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantisation of a Linear layer's ``weight`` [out, in]
    (chapter 09's exercise 3; what dynamic int8 does to the weights): ``(q, scale)`` with ``q``
    int8 [out, in] in [-127, 127] and ``scale`` [out] = max |row| / 127 (1 for an all-zero row, so
    that it stays zero), ``q = round(weight / scale)``. ``q * scale[:, None]`` is the weight the
    int8 layer multiplies with (:func:`dequantize_weight_int8`)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point tensor [out, in] (a Linear layer's)")
    amax = weight.detach().abs().amax(dim=1)  # [out]
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))  # [out]
    q = torch.round(weight.detach() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_weight_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q`` int8 [out, in] and ``scale`` [out] -> the float weight [out, in] they stand for."""
    return q.float() * scale[:, None].float()


@contextlib.contextmanager
def _no_cuda_home_notice():
    """Hide torch's harmless "No CUDA runtime is found" notice (logged by
    ``torch.utils.cpp_extension`` when ``torch.compile`` first imports it on a machine with a CUDA
    toolkit but no GPU) while the block runs; every other message still shows."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")

    log = logging.getLogger("torch.utils.cpp_extension")
    log.addFilter(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No CUDA runtime is found")
            yield
    finally:
        log.removeFilter(keep)


@contextlib.contextmanager
def _bf16_autocast(device_type: str):
    """``torch.autocast`` to bfloat16, with torch's fused Transformer-layer kernel switched off
    while it runs (the text encoder's ``nn.TransformerEncoderLayer`` then runs its plain
    operations, autocast as well): in torch 2.3 that kernel ignores CPU autocast and fails on
    bfloat16 inputs with float32 weights."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def quantize_linear_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of the ``nn.Linear`` layers of ``module``, in place (CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def apply_variant(pipe, name: str, amount: float = 0.5):
    """``(pipe_copy, context, note)``: a deep copy of ``pipe`` changed as ``name`` says, a context
    manager factory to sample in, and a note (what was done). ``pipe`` itself is never changed."""
    p = copy.deepcopy(pipe)
    dev = p.unet.device
    ctx = contextlib.nullcontext
    note = ""
    if name == "fp32":
        pass
    elif name == "bf16-autocast":
        ctx = lambda: _bf16_autocast(dev.type)  # noqa: E731
        note = "convolutions and matmuls in bfloat16"
    elif name == "channels-last":
        p.unet.to(memory_format=torch.channels_last)
        note = "UNet weights NHWC"
    elif name == "compile":
        p.unet.compile()  # in place; compiles on first call
        note = "torch.compile (inductor)"
    elif name == "int8-dynamic":
        if dev.type != "cpu":
            raise RuntimeError("dynamic int8 quantisation runs on the CPU only")
        # not the text encoder: it runs once per call, and nn.TransformerEncoderLayer's fast path
        # reads `linear1.weight`, a method on a quantised Linear
        quantize_linear_int8(p.unet)
        n = sum(
            1
            for m in p.unet.modules()
            if type(m).__name__ == "Linear" and "quantized" in type(m).__module__
        )
        note = f"{n} Linear layers of the UNet in int8"
    elif name.startswith("prune"):
        frac = prune_l1(p.unet, amount)
        note = f"{100 * frac:.0f}% of conv/linear weights zero (dense kernels)"
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")
    return p, ctx, note


def measure_variants(
    pipe,
    captions: list[str],
    variants=VARIANTS,
    sampler: str = "dpm++",
    steps: int = 20,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Apply each variant to a copy of ``pipe``, warm it up (for ``"compile"``: compile it), then
    time ``repeats`` rounds round-robin over the variants sampling ``captions`` with ``sampler`` and
    ``steps``. Rows ``{"variant", "ms_per_picture", "speedup", "accuracy", "delta_points",
    "max_pixel_change", "setup_s", "note", "error", "speedup_low", "speedup_high"}``; ``speedup``
    and the deltas are against the ``"fp32"`` row (measured in the same rounds); ``speedup_low`` /
    ``speedup_high`` are the smallest and largest ratio of one round (fp32's time in that round
    over the variant's), so a variant faster in every round has ``speedup_low > 1``. A variant
    that fails (e.g. ``torch.compile`` without a C++ compiler) keeps its row, with the reason in
    ``error`` and no numbers."""

    from .judges import score_shapes
    from .sampling import make_scheduler
    from .samplers import sample_shapes

    variants = list(variants)
    if "fp32" not in variants:
        variants.insert(0, "fp32")
    made, rows = {}, {}
    for v in progress_bar(variants, desc="variants: set up", disable=not progress):
        rows[v] = {"variant": v, "note": "", "error": None}
        t0 = time.perf_counter()
        try:
            p, ctx, note = apply_variant(pipe, v)
            sched = make_scheduler(sampler, p)
            with _no_cuda_home_notice(), ctx():
                sample_shapes(p, captions, sched, 2, seed=seed)  # warm-up / compile, same batch
            synchronize(p.unet.device)
            made[v] = (p, ctx, sched)
            rows[v]["note"] = note
        except Exception as exc:  # report, don't crash
            msg = str(exc).strip().splitlines()
            rows[v]["error"] = f"{type(exc).__name__}: {msg[0][:160] if msg else ''}"
        rows[v]["setup_s"] = time.perf_counter() - t0
    times = {v: [] for v in made}
    images = {}
    for _ in progress_bar(range(repeats), desc="variants: timing", disable=not progress):
        for v, (p, ctx, sched) in made.items():
            t0 = time.perf_counter()
            with _no_cuda_home_notice(), ctx():
                images[v] = sample_shapes(p, captions, sched, steps, seed=seed)
            synchronize(p.unet.device)
            times[v].append(time.perf_counter() - t0)
    base = images.get("fp32")
    base_ms = (
        1000 * float(np.median(times["fp32"])) / len(captions) if "fp32" in times else float("nan")
    )
    base_acc = None
    out = []
    for v in variants:
        r = rows[v]
        if v in made:
            r["ms_per_picture"] = 1000 * float(np.median(times[v])) / len(captions)
            r["speedup"] = base_ms / r["ms_per_picture"]
            if "fp32" in times:  # per round: both timed back to back, under the same load
                ratios = [b / t for b, t in zip(times["fp32"], times[v])]
                r["speedup_low"], r["speedup_high"] = min(ratios), max(ratios)
            r["accuracy"] = float(score_shapes(images[v], captions)["all"])
            base_acc = r["accuracy"] if v == "fp32" else base_acc
            r["max_pixel_change"] = (
                float((images[v] - base).abs().max()) if base is not None else float("nan")
            )
        out.append(r)
    for r in out:
        if "accuracy" in r and base_acc is not None:
            r["delta_points"] = 100 * (r["accuracy"] - base_acc)
    return out


def format_table(rows: list[dict]) -> str:
    """A plain-text table of :func:`measure_variants`' rows."""
    lines = [
        f"{'variant':<15}{'ms/picture':>11}{'speed-up':>10}{'per round':>13}{'accuracy':>10}"
        f"{'Δ points':>10}{'max Δpixel':>11}  note"
    ]
    for r in rows:
        if r.get("error"):
            lines.append(
                f"{r['variant']:<15}{'-':>11}{'-':>10}{'-':>13}{'-':>10}{'-':>10}{'-':>11}"
                f"  FAILED: {r['error']}"
            )
            continue
        note = r["note"] + (f"; set-up {r['setup_s']:.0f} s" if r["variant"] == "compile" else "")
        lines.append(
            f"{r['variant']:<15}{r['ms_per_picture']:>11.2f}{r['speedup']:>9.2f}x"
            f"{r.get('speedup_low', np.nan):>7.2f}-{r.get('speedup_high', np.nan):<4.2f}"
            f"{100 * r['accuracy']:>10.1f}%"
            f"{r['delta_points']:>+10.1f}{r['max_pixel_change']:>11.3f}  {note}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# One table of everything against one baseline (bench/fast_generation.py and the notebook)
# --------------------------------------------------------------------------------------------
OTHER_MODELS = ("shapes-t2i-fast", "shapes-t2i-latent")


def other_model_rows(
    captions: list[str],
    names=OTHER_MODELS,
    repeats: int = 3,
    seed: int = 0,
    reference: torch.Tensor | None = None,
) -> list[dict]:
    """Rows for the chapter's other fast models (distilled, latent) at their own default settings,
    for those ``course_lib.pretrained`` can load; a name it does not know, or knows but has not
    shipped, gets a row with ``error`` saying so. Timing: one warm-up call, median of
    ``repeats``."""
    from . import pretrained
    from .samplers import quality

    rows = []
    known = set(pretrained.known())
    for name in names:
        if name not in known:
            rows.append({"name": name, "error": "not registered"})
            continue
        try:
            pipe = pretrained.load(name)
        except pretrained.CheckpointError as exc:
            rows.append({"name": name, "error": f"not shipped ({str(exc).splitlines()[0][:80]})"})
            continue

        def run():
            return pipe(
                list(captions), generator=torch.Generator().manual_seed(seed), output_type="pt"
            ).images

        made = {}
        if len(captions) > 2:
            pipe(list(captions)[:2], output_type="pt")  # warm-up, small batch
        ms = ms_per_picture(
            lambda: made.update(images=run()),
            len(captions),
            repeats=repeats,
            warmup=int(len(captions) <= 2),
        )
        q = quality(pipe, made["images"], list(captions), reference)
        steps = getattr(pipe, "default_num_inference_steps", None)
        rows.append(
            {
                "name": name,
                "ms_per_picture": ms,
                **q,
                "note": (
                    f"its defaults: {steps} steps, guidance "
                    f"{getattr(pipe, 'default_guidance_scale', '?')}"
                ),
            }
        )
    return rows


def combined_rows(
    baseline: dict,
    sweep_rows=(),
    cfg_rows=(),
    variant_rows=(),
    other_rows=(),
    variant_label: str = "DPM++",
) -> list[dict]:
    """Everything measured, as rows
    ``{"name", "ms_per_picture", "speedup", "accuracy", "kid", "note"}`` with ``speedup`` = baseline
    ms / row ms (all measured in the same run). ``baseline`` is the DDPM-1000 fp32 row of
    :func:`course_lib.samplers.sweep` (chapter 08), or a row of :func:`other_model_rows` (a
    ``"name"``: chapter 09 times its teacher at its defaults)."""
    from .sampling import LABELS

    base_ms = baseline["ms_per_picture"]
    base_name = (
        f"{baseline['name']} (baseline)"
        if "name" in baseline
        else f"{LABELS['ddpm']}-{baseline['steps']} fp32 (baseline)"
    )
    out = [{"name": base_name, **_pick(baseline), "note": baseline.get("note", "")}]
    for r in sweep_rows:
        if r is baseline or (r["sampler"], r["steps"]) == (baseline["sampler"], baseline["steps"]):
            continue
        out.append({"name": f"{LABELS[r['sampler']]}-{r['steps']}", **_pick(r), "note": ""})
    for r in cfg_rows:
        out.append(
            {
                "name": f"{variant_label} guidance {r['cfg']}",
                **_pick(r),
                "note": f"{r['ratio_to_off']:.2f}x the time of guidance off",
            }
        )
    for r in variant_rows:
        if r.get("error"):
            out.append({"name": f"{variant_label} {r['variant']}", "note": f"FAILED: {r['error']}"})
        else:
            out.append(
                {
                    "name": f"{variant_label} {r['variant']}",
                    **_pick(r),
                    "note": f"{r['speedup']:.2f}x vs fp32; {r['note']}".rstrip("; "),
                }
            )
    for r in other_rows:
        if r is baseline:
            continue
        if r.get("error"):
            out.append({"name": r["name"], "note": f"skipped: {r['error']}"})
        else:
            out.append({"name": r["name"], **_pick(r), "note": r.get("note", "")})
    for r in out:
        if "ms_per_picture" in r:
            r["speedup"] = base_ms / r["ms_per_picture"]
    return out


def _pick(r: dict) -> dict:
    return {k: r[k] for k in ("ms_per_picture", "accuracy", "kid") if k in r}


def format_combined(rows: list[dict]) -> str:
    """Plain-text table of :func:`combined_rows`."""
    lines = [
        f"{'what':<34}{'ms/picture':>11}{'speed-up':>10}{'accuracy':>10}{'KID x1000':>11}  note"
    ]
    for r in rows:
        if "ms_per_picture" not in r:
            lines.append(f"{r['name']:<34}{'-':>11}{'-':>10}{'-':>10}{'-':>11}  {r['note']}")
            continue
        acc = f"{100 * r['accuracy']:.1f}%" if "accuracy" in r else "-"
        kid = f"{r['kid']:.0f}" if "kid" in r else "-"
        lines.append(
            f"{r['name']:<34}{r['ms_per_picture']:>11.2f}{r['speedup']:>9.1f}x{acc:>10}{kid:>11}"
            f"  {r['note']}"
        )
    return "\n".join(lines)
