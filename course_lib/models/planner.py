"""The language model as planner: a free request becomes "visual code" (chapter 06).

A scene spec is JSON with the words of the Shapes contract:
``{"objects": [{"size", "color", "shape", "row", "col"}, ...]}``. Whatever writes it, a trained
planner or an instruct LLM, :func:`parse_plan` checks it and refuses anything outside the vocabulary
with a clear :class:`PlanError`: a language model's output is untrusted text.

Offline the planner is a frozen pretrained text encoder (all-mpnet-base-v2) with small trainable
heads (:class:`PlannerHeads`, shipped as ``shapes-planner``;
``pretrained.load("shapes-planner").plan(text)``); online a small instruct LLM with a prompt
(:class:`LLMPlanner`), same interface.

A planner that knows when it does not know: every plan has a confidence (the probability the heads
give the whole plan, the product of the probabilities of every decision in it), and ``plan`` refuses
with :class:`PlanError` below a threshold. :func:`calibrate_threshold` picks that threshold on
held-out requests (never the test set): the lowest confidence at which the accepted plans are at
least ``target_precision`` exact. The shipped planner trains on the seen wording less a quarter of
its words and sentence forms, and is calibrated on requests made of that held-out quarter: words
new to it, as the unseen ones are. :func:`risk_coverage` gives the whole curve:
how many requests are accepted (coverage) against how many of the accepted are exactly right.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import runtime
from ..data import shapes
from ..config import Config
from ..data.wordings import MAX_OBJECTS, make_requests, paraphrase, split_vocabulary
from ..pretrained import TrainResult, register, run_recipe
from ..runtime import get_device
from ..text_encoders import DIMS, FrozenTextEncoder
from ..training import fit, infinite_loader, make_step
from .attention import TransformerBlock
from .plan_checks import PlanError, allowed_words, check_prediction, check_request


#: The shipped planner never reads this share of the seen words and sentence forms in training
#: (:func:`course_lib.data.wordings.split_vocabulary`); its refusal threshold is calibrated on
#: requests made of them, words new to it as the unseen ones are, at this precision.
HELD_OUT_FRACTION = 0.25
HELD_OUT_PRECISION = 0.9


def plan_to_json(objects) -> dict:
    """``[ShapeSpec, ...]`` -> ``{"objects": [{"size", "color", "shape", "row", "col"}, ...]}``."""
    objects = [objects] if isinstance(objects, shapes.ShapeSpec) else list(objects)
    return {"objects": [o.as_dict() for o in objects]}


def _extract_json(text: str):
    """The JSON object inside a model's reply (a ```json fence or surrounding words are allowed).
    Parsed with ``json.loads``: never ``eval``."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise PlanError(f"no JSON object in the planner's output: {text[:120]!r}")
    try:
        return json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"the planner's output is not valid JSON ({exc.msg} at character {exc.pos}): "
            f"{text[start : end + 1][:120]!r}"
        ) from None


def parse_plan(output) -> list[shapes.ShapeSpec]:
    """Check a planner's (or an LLM's) output and turn it into ``ShapeSpec`` objects.

    ``output``: a dict, or text holding one JSON object ``{"objects": [...]}`` with one or two
    objects, each with exactly the keys size, color, shape, row, col and values from ``shapes.md``
    (case and surrounding spaces are forgiven). Two objects must be drawable together
    (:func:`shapes.scene_is_valid`). Anything else raises :class:`PlanError` saying what is wrong
    and what is allowed: never a silently wrong picture.
    """
    data = _extract_json(output) if isinstance(output, str) else output
    if not isinstance(data, dict) or "objects" not in data:
        raise PlanError(f'expected a JSON object with the key "objects", got {str(data)[:120]!r}')
    objs = data["objects"]
    if not isinstance(objs, list) or not 1 <= len(objs) <= MAX_OBJECTS:
        raise PlanError(
            f'"objects" must be a list of 1 to {MAX_OBJECTS} objects, got {str(objs)[:120]!r}'
        )
    specs = []
    for k, obj in enumerate(objs):
        if not isinstance(obj, dict):
            raise PlanError(f"object {k} must be a JSON object, got {obj!r}")
        missing = [a for a in shapes.ATTRIBUTES if a not in obj]
        extra = [key for key in obj if key not in shapes.ATTRIBUTES]
        if missing or extra:
            raise PlanError(
                f"object {k} must have exactly the keys {', '.join(shapes.ATTRIBUTES)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
            )
        values = {}
        for a in shapes.ATTRIBUTES:
            v = obj[a]
            v = v.strip().lower() if isinstance(v, str) else v
            if v not in shapes.ATTRIBUTE_VALUES[a]:
                raise PlanError(
                    f"object {k}: {a} {obj[a]!r} is not in the Shapes vocabulary; "
                    f"allowed {a}: {', '.join(shapes.ATTRIBUTE_VALUES[a])}"
                )
            values[a] = v
        specs.append(shapes.ShapeSpec(**values))
    if len(specs) == 2 and not shapes.scene_is_valid(*specs):
        a, b = specs
        raise PlanError(
            f"the two objects cannot be drawn together: {a.row}-{a.col} ({a.size}) and "
            f"{b.row}-{b.col} ({b.size}) are the same cell or so close their boxes would overlap"
        )
    return specs


KINDS = ("none", "one", "two")


@dataclasses.dataclass
class PlannerConfig(Config):
    """What builds a planner's heads, and the threshold its ``plan`` uses."""

    encoder: str = "mpnet"  # the frozen text encoder: "minilm" or "mpnet"
    # hidden layers averaged (mpnet's last four; None: the last)
    encoder_layers: list | None = dataclasses.field(default_factory=lambda: [9, 10, 11, 12])
    d_model: int = 128  # width of the heads
    n_heads: int = 4
    layers: int = 2  # cross-attention blocks the queries go through (0: one
    #                  attention pooling per decision, read by a linear head)
    dropout: float = 0.1
    threshold: float = 0.5  # plans less confident than this are refused
    target_precision: float = 0.98  # what calibration asks of accepted held-out seen-wording plans


class PlannerHeads(nn.Module):
    """Trainable part of the planner, on top of frozen token states [n, L, d].

    Learned queries read the request: one decides "how many objects" (none / one / two), and each
    object slot has one query per attribute. With ``layers=0`` each query is one attention pooling
    over the projected token states, read by a linear head: little capacity of its own, so what it
    reads off an unseen word is what the frozen encoder knows about it. With ``layers > 0`` the
    queries (one per slot) first go through Transformer blocks with cross-attention (chapter 03's).
    """

    def __init__(self, config: PlannerConfig | dict | None = None):
        super().__init__()
        self.config = cfg = PlannerConfig.from_dict(config)
        if cfg.encoder not in DIMS:
            raise ValueError(f"encoder must be one of {', '.join(DIMS)}, got {cfg.encoder!r}")
        d_text, d = DIMS[cfg.encoder], cfg.d_model
        self.proj = nn.Sequential(
            nn.LayerNorm(d_text), nn.Dropout(cfg.dropout), nn.Linear(d_text, d)
        )
        per_slot = len(shapes.ATTRIBUTES) if cfg.layers == 0 else 1
        self.queries = nn.Parameter(torch.randn(1 + MAX_OBJECTS * per_slot, d) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, cfg.n_heads, dropout=cfg.dropout, d_context=d)
            for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.kind_head = nn.Linear(d, len(KINDS))
        self.heads = nn.ModuleDict(
            {a: nn.Linear(d, len(shapes.ATTRIBUTE_VALUES[a])) for a in shapes.ATTRIBUTES}
        )

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> dict:
        """``{"kind": [n, 3], "size": [n, 2, 2], "color": [n, 2, 6], ...}`` logits."""
        ctx = self.proj(states)  # [n, L, d]
        if self.config.layers == 0:
            scores = torch.einsum("nld,qd->nql", ctx, self.queries) / ctx.shape[-1] ** 0.5
            scores = scores.masked_fill(mask[:, None, :] == 0, float("-inf"))
            q = self.norm(scores.softmax(-1) @ ctx)  # [n, 1 + 2 * 5, d]
            slots = q[:, 1:].unflatten(1, (MAX_OBJECTS, len(shapes.ATTRIBUTES)))  # [n, 2, 5, d]
            out = {"kind": self.kind_head(q[:, 0])}
            out.update({a: h(slots[:, :, i]) for i, (a, h) in enumerate(self.heads.items())})
            return out
        q = self.queries.unsqueeze(0).expand(len(states), -1, -1)  # [n, 3, d]
        for blk in self.blocks:
            q = blk(q, context=ctx, context_mask=mask)
        q = self.norm(q)
        out = {"kind": self.kind_head(q[:, 0])}
        out.update({a: h(q[:, 1:]) for a, h in self.heads.items()})
        return out


def plan_targets(scenes) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of a list of scenes (lists of 1-2 ShapeSpec, or None): kind [n] and attributes
    [n, MAX_OBJECTS, 5] (``-100`` where a slot is empty: ignored by the loss)."""
    kind = torch.tensor([0 if s is None else len(s) for s in scenes])
    attrs = torch.full((len(scenes), MAX_OBJECTS, len(shapes.ATTRIBUTES)), -100, dtype=torch.long)
    for i, s in enumerate(scenes):
        for j, spec in enumerate(s or []):
            attrs[i, j] = torch.tensor(spec.labels())
    return kind, attrs


def planner_loss(logits: dict, kind: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(logits["kind"], kind)
    for i, a in enumerate(shapes.ATTRIBUTES):
        loss = loss + F.cross_entropy(
            logits[a].flatten(0, 1), attrs[:, :, i].flatten(), ignore_index=-100
        )
    return loss


def planner_encoder(config: PlannerConfig, max_length: int | None = None) -> FrozenTextEncoder:
    """The frozen text encoder a planner of ``config`` reads."""
    return FrozenTextEncoder(config.encoder, max_length=max_length, layers=config.encoder_layers)


class Planner:
    """What ``pretrained.load("shapes-planner")`` returns: ``plan(text) -> {"objects": [...]}``.

    A request is refused with :class:`PlanError` (never a silently wrong picture) when the heads say
    it is not a Shapes scene, or when the plan's confidence is below ``threshold`` (default: the
    calibrated one in the heads' config).
    """

    def __init__(
        self,
        heads: PlannerHeads,
        encoder: FrozenTextEncoder | None = None,
        threshold: float | None = None,
    ):
        self.heads = heads.eval()
        self.encoder = encoder or planner_encoder(heads.config)
        self.threshold = heads.config.threshold if threshold is None else float(threshold)

    @torch.no_grad()
    def predict(self, texts: list[str], states=None) -> list[dict]:
        """For each text: ``{"kind", "objects" (list of dicts), "confidence" (the probability of the
        whole plan: the product over its decisions), "weakest" (the least sure decision),
        "weakest_p", "weakest_attribute", "weakest_object" (0-based), "candidates" (the least sure
        attribute decision and its two most likely values with their probabilities; None, None,
        [] for "none")}``. ``states``: precomputed ``(states, mask)`` of the texts."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
            raise TypeError("texts must be a non-empty list of strings")
        for t in texts:
            check_request(t)
        s, m = states if states is not None else encode_requests(self.encoder, list(texts))
        dev = next(self.heads.parameters()).device
        probs = {}
        for i in range(0, len(texts), 512):
            width = int(m[i : i + 512].sum(1).max())
            logits = self.heads(
                s[i : i + 512, :width].to(dev).float(), m[i : i + 512, :width].to(dev)
            )
            for k, v in logits.items():
                probs.setdefault(k, []).append(v.softmax(-1).cpu())
        probs = {k: torch.cat(v) for k, v in probs.items()}
        out = []
        for i in range(len(texts)):
            k = int(probs["kind"][i].argmax())
            conf = weakest_p = float(probs["kind"][i, k])
            weakest, ask = "number of objects", (None, None, 2.0, [])  # least sure attribute
            objects = []
            for j in range(k):
                obj = {}
                for a in shapes.ATTRIBUTES:
                    p = probs[a][i, j]
                    idx = int(p.argmax())
                    obj[a] = shapes.ATTRIBUTE_VALUES[a][idx]
                    conf *= float(p[idx])
                    if float(p[idx]) < ask[2]:
                        vals, top = shapes.ATTRIBUTE_VALUES[a], zip(*p.topk(2))
                        ask = (a, j, float(p[idx]), [(vals[int(x)], float(v)) for v, x in top])
                    if float(p[idx]) < weakest_p:
                        weakest_p, weakest = float(p[idx]), f"{a} of object {j + 1}"
                objects.append(obj)
            out.append(
                {
                    "kind": KINDS[k],
                    "objects": objects,
                    "confidence": conf,
                    "weakest": weakest,
                    "weakest_p": weakest_p,
                    "weakest_attribute": ask[0],
                    "weakest_object": ask[1],
                    "candidates": ask[3],
                }
            )
        return out

    def plan(self, text: str) -> dict:
        """A free request -> ``{"objects": [{"size", "color", "shape", "row", "col"}, ...],
        "confidence": p}`` (checked by :func:`parse_plan`). Raises :class:`PlanError` on requests it
        cannot map, naming what it could not read."""
        if not isinstance(text, str):
            raise TypeError(f"plan takes one request as a string, got {type(text).__name__}")
        return self.plan_many([text])[0]

    def plan_many(self, texts: list[str], errors: str = "raise", states=None) -> list:
        """Plans of many requests; ``errors="return"`` puts the :class:`PlanError` in the list
        instead of raising."""
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        res = []
        for text, p in zip(texts, self.predict(texts, states)):
            try:
                res.append(self.decide(text, p))
            except PlanError as exc:
                if errors == "raise":
                    raise
                res.append(exc)
        return res

    def decide(self, text: str, p: dict) -> dict:
        """Accept a prediction of :meth:`predict` as a plan, or raise :class:`PlanError`
        (:func:`course_lib.models.plan_checks.check_prediction`: more objects asked for than a
        scene holds, not a Shapes scene, another number of objects than the words ask for, or a
        confidence below the threshold, asking about the one unsure attribute)."""
        check_prediction(text, p, self.threshold)
        plan = {"objects": p["objects"]}
        parse_plan(plan)
        return dict(plan, confidence=round(p["confidence"], 4))

    def __call__(self, text: str) -> dict:
        return self.plan(text)


def encode_requests(encoder: FrozenTextEncoder, texts: list[str], batch_size: int = 256):
    """Frozen states of many requests, float16 to keep them small: (states [n, L, d], mask
    [n, L])."""
    enc = encoder.encode(texts, batch_size=batch_size)
    return enc.states.half(), enc.mask


def scene_is_right(plan, scene) -> bool:
    """Is a planner's answer right? A plan must equal the scene object for object; for a request
    that is not a scene (``scene is None``) only a refusal is right."""
    if isinstance(plan, PlanError) or plan is None:
        return scene is None
    return scene is not None and plan["objects"] == [o.as_dict() for o in scene]


def prediction_is_right(p: dict, scene) -> bool:
    """Is :meth:`Planner.predict`'s most likely answer right (before any threshold)?"""
    if p["kind"] == "none":
        return scene is None
    return scene is not None and p["objects"] == [o.as_dict() for o in scene]


def calibrate_threshold(
    confidence, right, target_precision: float, min_accepted: int = 20
) -> float:
    """The lowest threshold at which the accepted answers (confidence >= threshold) are at least
    ``target_precision`` right, among at least ``min_accepted`` accepted; 1.0 if there is none."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(right, dtype=np.float64)
    order = np.argsort(-conf)
    precision = np.cumsum(ok[order]) / np.arange(1, len(conf) + 1)  # accepting the k most confident
    good = [
        k
        for k in range(len(conf))
        if k + 1 >= min_accepted
        and precision[k] >= target_precision
        and (k + 1 == len(conf) or conf[order[k + 1]] < conf[order[k]])
    ]
    return float(conf[order[max(good)]]) if good else 1.0


def risk_coverage(confidence, right) -> dict:
    """The risk-coverage curve: for every threshold, the share accepted (coverage) and the share of
    the accepted that is right. Arrays sorted by falling threshold."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(right, dtype=np.float64)
    order = np.argsort(-conf)
    k = np.arange(1, len(conf) + 1)
    return {
        "threshold": conf[order],
        "coverage": k / len(conf),
        "precision": np.cumsum(ok[order]) / k,
    }


def train_planner(
    config: PlannerConfig | dict | None = None,
    n_train: int = 6000,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    device=None,
    encoder=None,
    n_calibrate: int = 1500,
    progress: bool = True,
    vocab="seen",
    calibration_vocab="seen",
):
    """Train :class:`PlannerHeads` on ``n_train`` requests in the *seen* wording (the encoder is
    frozen, so its states are computed once), then calibrate the refusal threshold on
    ``n_calibrate`` fresh requests. ``vocab`` / ``calibration_vocab``: the wordings of the two
    (``"seen"`` or the tables of :func:`course_lib.data.wordings.split_vocabulary`: train on the
    kept words, calibrate on the held-out ones). Returns ``(heads, history, calibration)`` with the
    threshold set in ``heads.config``."""
    cfg = PlannerConfig.from_dict(config)
    device = device or get_device()
    with runtime.seeded(seed):
        encoder = encoder or planner_encoder(cfg)
        texts, scenes = make_requests(n_train, seed=seed, vocab=vocab)
        states, mask = encode_requests(encoder, texts)
        kind, attrs = plan_targets(scenes)
        heads = PlannerHeads(cfg).to(device)
        data = torch.utils.data.TensorDataset(states, mask, kind, attrs)
        loader = infinite_loader(data, min(batch_size, len(texts)), seed=seed)
        opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=min(0.5, max(0.1, 3 / steps))
        )

        def loss_fn(m, batch):
            s, mk, k, a = (b.to(device) for b in batch)
            width = int(mk.sum(1).max())
            return planner_loss(m(s[:, :width].float(), mk[:, :width]), k, a)

        hist = fit(
            make_step(heads, loss_fn, opt, scheduler=sched),
            loader,
            steps=steps,
            desc="shapes-planner",
            progress=progress,
        )
        heads.eval()
        calibration = calibrate(
            heads, encoder, n_calibrate, seed=seed + 1000, vocab=calibration_vocab
        )
        return heads, hist, calibration


def calibrate(
    heads: PlannerHeads, encoder=None, n: int = 1500, seed: int = 1000, vocab="seen"
) -> dict:
    """Set ``heads.config.threshold`` from ``n`` fresh requests in ``vocab`` (never trained on,
    never the test set; scenes and non-scenes mixed as in training): :func:`calibrate_threshold` at
    ``heads.config.target_precision`` over the requests the heads take for scenes."""
    texts, scenes = make_requests(n, seed=seed, vocab=vocab)
    preds = Planner(heads, encoder, threshold=0.0).predict(texts)
    accepted = [p["kind"] != "none" for p in preds]  # refused whatever the threshold
    conf = [p["confidence"] for p, a in zip(preds, accepted) if a]
    right = [prediction_is_right(p, s) for p, s, a in zip(preds, scenes, accepted) if a]
    t = calibrate_threshold(conf, right, heads.config.target_precision)
    heads.config.threshold = t
    return {"threshold": t, "n": n, "seed": seed, "target_precision": heads.config.target_precision}


def plan_scores(
    planner: Planner, texts: list[str], scenes: list, preds: list | None = None
) -> dict:
    """How the planner does on requests with known scenes: ``coverage`` (share of scene requests it
    accepts), ``exact_among_accepted`` (share of those plans exactly right; None if it accepts
    none), ``exact_match`` (share of all requests answered right: an exact plan, or a refusal of a
    non-scene), ``refused``, and per-attribute accuracy over accepted plans with the right number of
    objects. ``preds``: the planner's :meth:`Planner.predict` of ``texts``, if already computed."""
    preds = preds if preds is not None else planner.predict(texts)
    answers = []
    for text, p in zip(texts, preds):
        try:
            answers.append(planner.decide(text, p))
        except PlanError as exc:
            answers.append(exc)
    right = [scene_is_right(a, s) for a, s in zip(answers, scenes)]
    accepted = [not isinstance(a, PlanError) for a in answers]
    n_scene = sum(s is not None for s in scenes)
    acc_scene = [r for r, a, s in zip(right, accepted, scenes) if a and s is not None]
    per_attr = {a: [0, 0] for a in shapes.ATTRIBUTES}
    for p, s in zip(answers, scenes):
        if isinstance(p, PlanError) or s is None or len(p["objects"]) != len(s):
            continue
        for o, w in zip(p["objects"], s):
            for a in shapes.ATTRIBUTES:
                per_attr[a][0] += o[a] == getattr(w, a)
                per_attr[a][1] += 1
    n = max(1, len(texts))
    out = {
        "exact_match": sum(right) / n,
        "refused": 1 - sum(accepted) / n,
        "n": len(texts),
        "coverage": len(acc_scene) / n_scene if n_scene else 0.0,
        "exact_among_accepted": float(np.mean(acc_scene)) if acc_scene else None,
    }
    out.update({a: c / t for a, (c, t) in per_attr.items() if t})
    return out


def planner_test_sets(seed: int = 20_000) -> dict:
    """The unseen-wording test sets: every one of the 324 specs in ``wordings.paraphrase(...,
    vocab="unseen")`` twice; 400 relational and 300 absolute two-object requests; 300 requests that
    are not Shapes scenes (words never seen in training)."""
    rng = np.random.default_rng([seed, 63])
    one = [(paraphrase(s, rng, "unseen"), [s]) for _ in range(2) for s in shapes.all_specs("all")]
    sets = {"one object": ([t for t, _ in one], [s for _, s in one])}
    for name, kind, n in (
        ("two objects, relation", "relation", 400),
        ("two objects, absolute", "absolute", 300),
        ("not a Shapes scene", "none", 300),
    ):
        sets[name] = make_requests(n, seed=seed, vocab="unseen", kind=kind)
    return sets


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def evaluate_planner_module(heads: PlannerHeads, encoder=None) -> dict:
    """Coverage and exact match among accepted plans on :func:`planner_test_sets` (unseen wording),
    overall and per set; the share of non-scene requests refused; the same on fresh requests in the
    seen wording for contrast; and the risk-coverage curve on the unseen scene requests."""
    planner = Planner(heads, encoder)
    sets = planner_test_sets()
    preds = {name: planner.predict(texts) for name, (texts, _) in sets.items()}
    out = {
        name: _rounded(plan_scores(planner, texts, scenes, preds[name]))
        for name, (texts, scenes) in sets.items()
    }
    scene_sets = [k for k in sets if k != "not a Shapes scene"]
    texts = [t for k in scene_sets for t in sets[k][0]]
    specs = [s for k in scene_sets for s in sets[k][1]]
    flat = [p for k in scene_sets for p in preds[k]]
    overall = plan_scores(planner, texts, specs, flat)
    out["unseen"] = _rounded(
        {k: overall[k] for k in ("coverage", "exact_among_accepted", "exact_match", "n")}
    )
    out["non_scene_refused"] = out["not a Shapes scene"]["refused"]
    conf = [p["confidence"] if p["kind"] != "none" else 0.0 for p in flat]
    curve = risk_coverage(conf, [prediction_is_right(p, s) for p, s in zip(flat, specs)])
    pick = np.unique(np.linspace(0, len(conf) - 1, 41).astype(int))
    out["risk_coverage_unseen"] = {k: [round(float(v), 4) for v in curve[k][pick]] for k in curve}
    seen_texts, seen_scenes = make_requests(600, seed=40_000, vocab="seen")
    out["seen wording (fresh requests)"] = _rounded(plan_scores(planner, seen_texts, seen_scenes))
    out["threshold"] = round(planner.threshold, 4)
    return out


def _train_planner_registered(seed: int = 0, quick: bool = False) -> TrainResult:
    steps, n_train, n_cal = (20, 256, 200) if quick else (1500, 6000, 1500)
    cfg = PlannerConfig(target_precision=HELD_OUT_PRECISION)
    kept, held = split_vocabulary("seen", HELD_OUT_FRACTION, seed=seed)

    def notes(history, calibration):
        return (
            f"frozen all-mpnet-base-v2 (not in this file) + heads; {n_train} requests in the seen "
            f"wording less a held-out {HELD_OUT_FRACTION:.0%} of its words and sentence forms, "
            f"{history.steps} steps, batch 128; refusal threshold {calibration['threshold']:.3f} "
            f"calibrated on {n_cal} requests in the held-out words at precision "
            f"{cfg.target_precision}; tested on unseen wording"
        )

    return run_recipe(
        lambda: train_planner(
            cfg,
            n_train=n_train,
            steps=steps,
            seed=seed,
            n_calibrate=n_cal,
            vocab=kept,
            calibration_vocab=held,
        ),
        evaluate_planner_module,
        notes=notes,
    )


register(
    "shapes-planner",
    role="component",
    domain="shapes",
    build=PlannerHeads,
    train=_train_planner_registered,
    evaluate=lambda heads: evaluate_planner_module(heads),
    finalize=lambda heads: Planner(heads),
    chapter="06",
    description="request -> scene spec JSON: frozen all-mpnet-base-v2 + cross-attention "
    "heads, refusals calibrated on held-out seen wording",
)


class LLMPlanner:
    """Online: a small instruct LLM (through transformers) writes the scene spec from a prompt; same
    ``plan(text)`` interface, its output checked by :func:`parse_plan`. Needs the weights
    (internet)."""

    PROMPT = (
        "You turn drawing requests into JSON. Allowed values: "
        + allowed_words()
        + '. Reply with JSON only, like {"objects": [{"size": "small", "color": "red", '
        '"shape": "circle", "row": "top", "col": "left"}]}. At most two objects, in different '
        "cells. Request: "
    )

    def __init__(
        self, name: str = "Qwen/Qwen2.5-0.5B-Instruct", device=None, max_new_tokens: int = 120
    ):
        if not runtime.online():
            raise RuntimeError(
                f"LLMPlanner downloads {name} and this runtime is offline "
                "(set COURSE_ONLINE=1 on a machine with internet)"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name)
        self.model = AutoModelForCausalLM.from_pretrained(name).to(device or get_device()).eval()
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def raw(self, text: str) -> str:
        msgs = [{"role": "user", "content": self.PROMPT + text}]
        ids = self.tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids.to(self.model.device)
        out = self.model.generate(ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def plan(self, text: str) -> dict:
        return plan_to_json(parse_plan(self.raw(text)))
