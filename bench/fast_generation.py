"""Chapters 08 and 09's benchmark: one table of speed ratios against DDPM-1000 / fp32, measured in one run.

    python bench/fast_generation.py            # the full table (about 15-25 minutes on one CPU thread)
    python bench/fast_generation.py --quick    # a smoke run: a few captions, DDPM-50 as the baseline

Rows: the samplers (DDPM, DDIM, DPM-Solver++, UniPC, Euler) at 1-50 steps, the cost of classifier-free
guidance (two passes batched as 2n, sequential, off), the arithmetic variants (bf16 autocast,
channels-last, torch.compile, dynamic int8, pruning) at DPM-Solver++ 20 steps, and the distilled and
latent models when they are shipped. Every number is measured in this run, on ``shapes-t2i`` judged by
``shapes-judge``: accuracy (all five attributes right) and paired KID x 1000 against real renderings.
Not a timed test: timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description="Chapters 08-09 benchmark: speed ratios against DDPM-1000 / fp32")
    ap.add_argument("--quick", action="store_true", help="a smoke run in well under a minute")
    ap.add_argument("--every", type=int, default=None, help="use every k-th of the 270 train captions")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes of compiling)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from course_lib import pretrained, runtime, samplers, sampling, speedups
    from course_lib.data import shapes

    t_start = time.perf_counter()
    q = args.quick
    every = args.every or (90 if q else 6)
    caps = shapes.all_captions("train")[::every]
    baseline_steps = 50 if q else 1000
    steps = (1, 2, 4) if q else (1, 2, 4, 8, 16, 32, 50)
    names = ("ddim", "dpm++") if q else sampling.SAMPLERS
    fixed_steps = 4 if q else 20
    repeats = 1 if q else 3
    variants = ["fp32", "channels-last"] if q else [v for v in speedups.VARIANTS
                                                      if not (args.no_compile and v == "compile")]
    print(f"{runtime.describe()} | {len(caps)} captions | baseline DDPM-{baseline_steps}", flush=True)

    pipe = pretrained.load("shapes-t2i", "cpu")
    ref = samplers.reference_set(pipe, caps)
    rows = samplers.sweep(pipe, caps, samplers=names, steps=steps, baseline_steps=baseline_steps,
                          repeats=repeats, reference=ref, progress=False)
    cfg = samplers.cfg_cost(pipe, caps, steps=fixed_steps, repeats=repeats)
    var = speedups.measure_variants(pipe, caps, variants, steps=fixed_steps, repeats=repeats, progress=False)
    other = [] if q else speedups.other_model_rows(caps, reference=ref, repeats=repeats)
    table = speedups.combined_rows(rows[0], rows, cfg, var, other, variant_label=f"DPM++-{fixed_steps}")
    print(speedups.format_combined(table))
    best = samplers.fastest_within(rows, 2.0, ("ddpm", baseline_steps))
    if best:
        print(f"fastest sampler within 2 points of DDPM-{baseline_steps}: {sampling.LABELS[best['sampler']]}-"
              f"{best['steps']}, {best['speedup']:.0f}x faster ({100 * best['accuracy']:.1f}% vs "
              f"{100 * rows[0]['accuracy']:.1f}%)")
    print(f"benchmark took {time.perf_counter() - t_start:.0f} s")
    return table


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
