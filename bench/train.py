"""Training throughput: `steelseg train` (Lightning) against a plain PyTorch loop, same run.

Same model, weights init, batch, data, augmentation, loss and optimiser; both skip warm-up steps.
Prints images/s for each, the ratio, steelseg's overhead, and the share of each step spent
waiting for the data loader.  Usage: python bench/train.py [--steps 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from steelseg.data.open import open_dataset
from steelseg.data.synth import SynthConfig, make_dataset
from steelseg.training.config import load_config
from steelseg.training.loaders import make_loaders, resolve_split
from steelseg.training.module import SteelsegModule
from steelseg.training.run import fit


class StepTimer(Callback):
    """Wall time per optimiser step and the part of it spent waiting for the next batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def result(self, batch: int) -> tuple[float, float]:
        s, e = self.starts[self.warmup:], self.ends[self.warmup:]
        total = e[-1] - self.ends[self.warmup - 1]
        wait = sum(s[i] - (e[i - 1] if i else self.ends[self.warmup - 1]) for i in range(len(s)))
        return len(s) * batch / total, wait / total


def plain_loop(cfg, steps: int, warmup: int) -> tuple[float, float]:
    L.seed_everything(cfg.train.seed, verbose=False)
    ds = open_dataset(cfg.data.path)
    train_ids, val_ids, _ = resolve_split(cfg, ds)
    loader, _ = make_loaders(cfg, ds.subset(train_ids), ds.subset(val_ids))
    module = SteelsegModule(cfg, ds.class_names)  # the same nn.Module and loss; no Trainer around it
    model, loss_fn = module.model.train(), module.loss_fn
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    it = iter(loader)
    wait = 0.0
    t_start = None
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if step == warmup:
            t_start, wait = t0, 0.0
        wait += time.perf_counter() - t0
        x = batch["image"]
        if cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    total = time.perf_counter() - t_start
    return steps * cfg.data.batch_size / total, wait / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--crop", default="128,384")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="steelseg-bench-"))
    n_train = (args.steps + args.warmup) * args.batch
    data = make_dataset(tmp / "data", SynthConfig(images=int(n_train / 0.8) + args.batch, seed=0))
    h, w = (int(v) for v in args.crop.split(","))
    cfg = load_config(None, [
        f"data.path={data}", f"out_dir={tmp / 'runs'}", f"data.batch_size={args.batch}", f"data.crop=[{h}, {w}]",
        f"data.num_workers={args.workers}", f"model.encoder={args.encoder}", "train.epochs=1",
        f"train.limit_train_batches={args.steps + args.warmup}", "train.limit_val_batches=0",
        "track.mlflow=false", "train.checkpoint_every=0", "train.scheduler=none"])
    print(f"model unet/{args.encoder}, batch {args.batch}, crop {h}x{w}, {args.workers} loader workers, "
          f"{args.steps} timed steps after {args.warmup} warm-up, torch threads {torch.get_num_threads()}")
    plain_ips, plain_wait = plain_loop(cfg, args.steps, args.warmup)
    timer = StepTimer(args.warmup)
    fit(cfg, progress=False, callbacks=[timer])
    ours_ips, ours_wait = timer.result(args.batch)
    print(f"plain PyTorch loop   {plain_ips:7.2f} images/s   waiting for data {100 * plain_wait:5.1f}% of the time")
    print(f"steelseg train       {ours_ips:7.2f} images/s   waiting for data {100 * ours_wait:5.1f}% of the time")
    print(f"ratio steelseg/plain {ours_ips / plain_ips:.3f}  (overhead {100 * (1 - ours_ips / plain_ips):+.1f}%)")


if __name__ == "__main__":
    main()
