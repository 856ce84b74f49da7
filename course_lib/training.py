"""One training loop for every chapter: a budget in steps or minutes, a progress bar, a loss
history, periodic evaluation, optional EMA of the weights. Introduced in chapter 00, used by all.

Two ways in:

* ``fit(step_fn, batches, ...)`` when a step is more than one optimiser step (a GAN's two players):
  ``step_fn(batch, step) -> dict`` of floats to log.
* ``fit(make_step(model, loss_fn, optimizer), batches, ...)`` for the ordinary case, where
  ``loss_fn(model, batch)`` returns a scalar loss (or ``(loss, dict_of_floats)``).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch

from .progress import progress_bar
from .runtime import time_fn


# --------------------------------------------------------------------------------------------
# Recipe helpers every model family shares
# --------------------------------------------------------------------------------------------
def budget_fraction(steps: int | None, minutes: float | None):
    """``frac(step)``: the fraction of the training budget used, the larger of ``step / steps`` and
    the wall-clock minutes since this call over ``minutes`` (whichever budget is given), capped at
    1."""
    t_start = time.perf_counter()

    def frac(step):
        fr = step / steps if steps else 0.0
        if minutes:
            fr = max(fr, (time.perf_counter() - t_start) / (60 * minutes))
        return min(fr, 1.0)

    return frac


def cosine_with_warmup(warmup: int, final_frac: float, frac_fn):
    """A ``LambdaLR`` factor: linear warm-up over ``warmup`` steps, then a cosine from 1 down to
    ``final_frac`` as ``frac_fn(step)`` (the fraction of the budget used, e.g.
    :func:`budget_fraction`) goes from 0 to 1."""

    def lr_lambda(step):
        if step < warmup:
            return (step + 1) / warmup
        fr = frac_fn(step)
        return final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * fr))

    return lr_lambda


def drop_mask(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Which of ``n`` training examples lose their condition (caption or class dropout, so that
    one network also learns the unconditional prediction classifier-free guidance needs): a bool
    tensor [n], each True with probability ``p``, drawn from ``generator``."""
    return torch.rand(n, generator=generator) < p


def drop_labels(
    labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Class dropout: ``labels`` [n] with each replaced by ``null_label`` (the "no class" label)
    with probability ``p`` (:func:`drop_mask`)."""
    drop = drop_mask(len(labels), p, generator)
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def ms_per_picture(fn, n_pictures: int, repeats: int = 3, warmup: int = 1, device=None) -> float:
    """Wall milliseconds per picture of ``fn()``, a call that makes ``n_pictures`` pictures: the
    median of ``repeats`` timed calls after ``warmup`` untimed ones (:func:`runtime.time_fn`,
    which waits for queued GPU work before each clock reading)."""
    t = time_fn(fn, repeats=repeats, warmup=warmup, device=device)
    return 1000 * t["median_s"] / n_pictures


@dataclass
class History:
    """What a run measured: per-step logs, evaluations, steps done, seconds spent."""

    logs: dict = field(default_factory=dict)  # name -> list of floats, one per step
    evals: list = field(default_factory=list)  # (step, dict) after each evaluation
    steps: int = 0
    seconds: float = 0.0

    def log(self, values: dict) -> None:
        for k, v in values.items():
            self.logs.setdefault(k, []).append(float(v))

    @property
    def losses(self) -> list:
        return self.logs.get("loss", [])

    def last(self, key: str = "loss", n: int = 50) -> float:
        """Mean of the last ``n`` logged values of ``key``."""
        vals = self.logs.get(key, [])[-n:]
        return sum(vals) / max(1, len(vals))

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds else float("nan")


class EMA:
    """Exponential moving average of a model's weights (and buffers), kept in ``self.module``.

    A thin wrapper over ``torch.optim.swa_utils.AveragedModel`` with an EMA update.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )
        self.decay = decay

    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module


def cycle(batches):
    """Repeat an iterable of batches (a DataLoader) for ever, re-iterating it each epoch."""
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("no batches to train on")


def make_step(
    model: torch.nn.Module,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler=None,
    ema: EMA | None = None,
    grad_clip: float | None = None,
):
    """The ordinary step: forward, ``loss_fn(model, batch)``, backward, (clip), step,
    (EMA, schedule)."""

    def step_fn(batch, step):
        model.train()
        out = loss_fn(model, batch)
        loss, extra = out if isinstance(out, tuple) else (out, {})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(model)
        return {"loss": loss.item(), **{k: float(v) for k, v in extra.items()}}

    return step_fn


def fit(
    step_fn,
    batches,
    steps: int | None = None,
    minutes: float | None = None,
    eval_fn=None,
    eval_every: int | None = None,
    history: History | None = None,
    desc: str = "training",
    progress: bool = True,
    callback=None,
) -> History:
    """Run ``step_fn(batch, step)`` until ``steps`` steps or ``minutes`` minutes, whichever is
    first.

    ``eval_fn(step) -> dict`` runs every ``eval_every`` steps and once at the end; its results are
    in ``history.evals``. ``callback(step, history)`` runs after every step (live plots). Pass an
    existing ``history`` to continue a run. Returns the :class:`History`.
    """
    if steps is None and minutes is None:
        raise ValueError("give a budget: steps=..., minutes=..., or both")
    history = history or History()
    deadline = time.perf_counter() + 60 * minutes if minutes is not None else math.inf
    limit = steps if steps is not None else None
    bar = progress_bar(total=limit, desc=desc, disable=not progress)
    start = time.perf_counter()
    first = history.steps
    last_eval = None
    try:
        for i, batch in zip(itertools.count(first), cycle(batches)):
            if (limit is not None and i - first >= limit) or time.perf_counter() >= deadline:
                break
            values = step_fn(batch, i)
            history.log(values)
            history.steps = i + 1
            bar.update(1)
            if "loss" in values and (i % 10 == 0):
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if eval_fn is not None and eval_every and (i + 1) % eval_every == 0:
                history.evals.append((i + 1, eval_fn(i + 1)))
                last_eval = i + 1
            if callback is not None:
                callback(i, history)
    finally:
        bar.close()
        history.seconds += time.perf_counter() - start
    if eval_fn is not None and last_eval != history.steps:
        history.evals.append((history.steps, eval_fn(history.steps)))
    return history


def infinite_loader(dataset, batch_size: int, seed: int = 0, drop_last: bool = True, **kwargs):
    """A shuffling ``DataLoader`` with its own seeded generator (reproducible batches)."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last, generator=g, **kwargs
    )
