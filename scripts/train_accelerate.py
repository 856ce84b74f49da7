"""Chapter 05's ``shapes-t2i`` training recipe, run through Hugging Face Accelerate (chapter 09, scale-out).

The same model, data, loss (v-prediction, cosine schedule, caption dropout), optimiser, learning-rate
schedule, gradient clipping and EMA as ``course_lib.models.text_to_image.train_text_to_image``, and the
same hyper-parameters (``TrainConfig``); what changes is who places the model, the optimiser and the
batches: ``accelerator.prepare(...)`` and ``accelerator.backward(loss)``. So the one script runs on a
laptop CPU, one GPU, several GPUs or several machines, chosen at launch time:

    accelerate launch --cpu --num_processes 1 scripts/train_accelerate.py --steps 2 --out runs/acc
    accelerate launch --num_processes 4 --multi_gpu scripts/train_accelerate.py --out runs/acc4
    accelerate launch --mixed_precision bf16 scripts/train_accelerate.py --out runs/bf16

With N processes each takes ``batch_size`` pictures per step (the prepared DataLoader gives each a
different shard), so the global batch is N x 32: scale ``--lr`` or ``--steps`` if you want the
single-process run's exact trajectory. Writes ``OUT/metrics.json`` (losses, steps, seconds, processes)
and ``OUT/shapes-t2i-accelerate.safetensors`` (the EMA weights; ``text_to_image.build`` loads them).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    from accelerate import Accelerator
    from safetensors.torch import save_file

    from course_lib import diffusion
    from course_lib.data import shapes
    from course_lib.models import text_to_image as t2i
    from course_lib.training import EMA, cycle, infinite_loader

    hp = t2i.TrainConfig().to_dict()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=hp["steps"])
    ap.add_argument("--out", default="runs/shapes-t2i-accelerate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=hp["lr"])
    ap.add_argument("--n-train", type=int, default=hp["n_train"], help="training pictures (the recipe: 12000)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    args = ap.parse_args(argv)
    hp.update(lr=args.lr, n_train=args.n_train)
    if args.threads:
        torch.set_num_threads(args.threads)

    accelerator = Accelerator()
    torch.manual_seed(args.seed)                                   # same initial weights in every process
    cfg = t2i.TextToImageConfig()
    model = t2i.TextToImageModel(cfg)
    ds = shapes.ShapesDataset(hp["n_train"], seed=args.seed + 100, split="train")
    tok = model.text_encoder.tokenizer
    ids, empty = tok(ds.captions), tok([""])
    data = torch.utils.data.TensorDataset(diffusion.to_model_range(ds.images), ids["input_ids"],
                                          ids["attention_mask"])
    loader = infinite_loader(data, hp["batch_size"], seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps = args.steps

    def lr_lambda(step):                                           # warm-up, then cosine to 5% (the recipe)
        if step < hp["warmup"]:
            return (step + 1) / hp["warmup"]
        lo = hp["final_lr_frac"]
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    ema = EMA(accelerator.unwrap_model(model), decay=hp["ema_decay"])
    dev = accelerator.device
    ac = diffusion.NoiseSchedule.make(cfg.schedule, cfg.num_train_timesteps).alphas_cumprod.to(dev)
    g = torch.Generator().manual_seed(args.seed + 1 + accelerator.process_index)
    e_ids, e_mask = empty["input_ids"].to(dev), empty["attention_mask"].to(dev)

    losses = []
    t0 = time.perf_counter()
    model.train()
    for step, (x0, in_ids, mask) in zip(range(steps), cycle(loader)):
        drop = (torch.rand(len(x0), generator=g) < hp["caption_dropout"]).to(dev)       # caption dropout
        in_ids = torch.where(drop[:, None], e_ids.expand_as(in_ids), in_ids)
        mask = torch.where(drop[:, None], e_mask.expand_as(mask), mask)
        loss = diffusion.diffusion_loss(lambda x, t: model(x, t, in_ids, mask), x0, ac, cfg.prediction_type,
                                        generator=g)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), hp["grad_clip"])
        opt.step()
        sched.step()
        ema.update(accelerator.unwrap_model(model))
        losses.append(float(accelerator.gather(loss.detach()[None]).mean()))
    seconds = time.perf_counter() - t0
    result = {"steps": len(losses), "losses": losses, "seconds": round(seconds, 2),
              "num_processes": accelerator.num_processes, "device": str(dev),
              "mixed_precision": accelerator.mixed_precision, "hyper_parameters": hp}
    if accelerator.is_main_process:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        ema_model = ema.module
        save_file({k: v.detach().cpu().contiguous() for k, v in ema_model.state_dict().items()},
                  str(out / "shapes-t2i-accelerate.safetensors"))
        (out / "metrics.json").write_text(json.dumps(result, indent=1))
        print(f"{len(losses)} steps on {accelerator.num_processes} process(es), {dev}: last loss "
              f"{losses[-1]:.4f}, {seconds:.1f} s; wrote {out}")
    accelerator.wait_for_everyone()
    return result


if __name__ == "__main__":
    main()
