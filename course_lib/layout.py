"""Layout composition: from a plan to a picture (chapter 06).

Every object of a plan becomes its canonical one-object caption, drawn in its own grid cell by any
``generate(captions) -> images`` callable (a chapter 05 pipeline, or the Shapes renderer), and the
cells are composed into one picture, as in LLM-grounded diffusion (Lian et al. 2023), here on
finished pictures instead of latents. :func:`judge_scenes` checks each object in its own box.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import shapes
from .models.planner import parse_plan, plan_to_json


def cell_box(spec: shapes.ShapeSpec, margin: float = 1.0) -> tuple[int, int, int, int]:
    """Pixel box (y0, y1, x0, x1), end exclusive, that holds ``spec``'s object whatever its jitter:
    cell centre +- (max side / 2 + position jitter + ``margin``)."""
    half = shapes.SIZES[spec.size][1] / 2 + shapes.POSITION_JITTER + margin
    cx = shapes.CELL_CENTRES[shapes.COLS.index(spec.col)]
    cy = shapes.CELL_CENTRES[shapes.ROWS.index(spec.row)]
    n = shapes.IMAGE_SIZE
    return (
        max(0, math.floor(cy - half)),
        min(n, math.ceil(cy + half)),
        max(0, math.floor(cx - half)),
        min(n, math.ceil(cx + half)),
    )


def cell_mask(spec: shapes.ShapeSpec, margin: float = 1.0) -> torch.Tensor:
    """FloatTensor[1, 32, 32]: 1 inside :func:`cell_box`, 0 outside."""
    y0, y1, x0, x1 = cell_box(spec, margin)
    m = torch.zeros(1, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    m[:, y0:y1, x0:x1] = 1
    return m


def compose(
    pictures: torch.Tensor, objects: list[shapes.ShapeSpec], margin: float = 1.0
) -> torch.Tensor:
    """One picture [3, 32, 32] from one picture per object ([k, 3, 32, 32], object i drawn in its
    cell): each keeps only its cell box, and where boxes overlap the brighter pixel wins (the
    background is black)."""
    if len(pictures) != len(objects):
        raise ValueError(f"{len(pictures)} pictures for {len(objects)} objects")
    masked = torch.stack([p * cell_mask(o, margin).to(p) for p, o in zip(pictures, objects)])
    return masked.max(0).values


def as_specs(plan) -> list[shapes.ShapeSpec]:
    """A plan (dict, JSON text, ShapeSpec or list of ShapeSpec) as a checked list of ShapeSpec."""
    if isinstance(plan, shapes.ShapeSpec):
        return [plan]
    if isinstance(plan, (list, tuple)) and all(isinstance(p, shapes.ShapeSpec) for p in plan):
        return parse_plan(plan_to_json(plan))
    return parse_plan(plan)


def draw_plans(plans: list, generate, margin: float = 1.0) -> torch.Tensor:
    """Pictures [n, 3, 32, 32] for plans of one or two objects, with any ``generate(captions) ->
    images [k, 3, 32, 32]`` (a pipeline, or the renderer). Every object of every plan becomes its
    canonical one-object caption ("a small red circle in the top left"), all generated in one call;
    a one-object plan is its picture, a two-object plan the :func:`compose` of its two."""
    specs = [as_specs(p) for p in plans]
    flat = [s for objs in specs for s in objs]
    pictures = generate([shapes.caption(s) for s in flat])
    if len(pictures) != len(flat):
        raise ValueError(f"generate returned {len(pictures)} pictures for {len(flat)} captions")
    out, i = [], 0
    for objs in specs:
        out.append(
            pictures[i] if len(objs) == 1 else compose(pictures[i : i + len(objs)], objs, margin)
        )
        i += len(objs)
    return torch.stack(out)


def renderer(seed: int = 0):
    """A perfect ``generate(captions) -> images``: the Shapes renderer itself (for testing layouts
    without a trained pipeline)."""
    rng = np.random.default_rng(seed)
    return lambda captions: shapes.render([shapes.parse_caption(c) for c in captions], rng)


def pipeline_generator(pipe, seed: int = 0, **kw):
    """``generate(captions) -> images`` from a course pipeline (chapter 05's generate: no progress
    bar)."""
    from .models.text_to_image import generate as generate_pictures

    def generate(captions):
        return generate_pictures(pipe, list(captions), seed=seed, **kw)

    return generate


@torch.no_grad()
def judge_scenes(images: torch.Tensor, plans: list, judge=None) -> dict:
    """Judge each object of each picture in its own cell box (the rest blacked out) with the
    shapes-judge: per-object attribute accuracies and ``scene`` (every attribute of every object
    right)."""
    from .judges import score_shapes

    specs = [as_specs(p) for p in plans]
    crops, targets, owner = [], [], []
    for i, objs in enumerate(specs):
        for o in objs:
            crops.append(images[i] * cell_mask(o).to(images[i]))
            targets.append(o)
            owner.append(i)
    res = score_shapes(torch.stack(crops), targets, judge)
    ok = res["correct"].all(1)
    scene_ok = torch.ones(len(specs), dtype=torch.bool)
    for k, i in enumerate(owner):
        scene_ok[i] &= bool(ok[k])
    out = {a: res[a] for a in shapes.ATTRIBUTES}
    out["object"] = ok.float().mean().item()
    out["scene"] = scene_ok.float().mean().item()
    out["scene_right"] = scene_ok  # BoolTensor [n]: each picture's verdict
    return out
