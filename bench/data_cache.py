"""Training step time with `data.cache` (images and masks decoded once, kept in memory) against
reading the files each epoch, in one process: the NEU-Seg recipe's model, loss, bf16 autocast and
AdamW (`configs/neu_seg.yaml`, random init), batch 16, on the real loaders `steelseg train` builds.

Rows: files with 2 loader workers (the baseline: the default data.num_workers), files in the main
process, the cache in the main process (the recipe: data.num_workers 0), the cache with 2 workers.
The rows take turns for --rounds rounds of --steps steps, so a machine that changes speed during
the run changes every row alike; each row's median ms/step and its ratio to the baseline are printed,
and the one-off decoding time of the cache.

Usage: python bench/data_cache.py [--data ../shared/data/neu_seg] [--steps 20] [--rounds 3] [--images 400]
Without NEU-Seg (--data missing) it runs on synthetic 200x200 images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from steelseg.data.augment import train_transform
from steelseg.data.open import open_dataset
from steelseg.data.samples import SegmentationSamples
from steelseg.data.synth import SynthConfig, make_dataset
from steelseg.training.config import load_config
from steelseg.training.module import SteelsegModule

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "neu_seg"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--encoder", default=None, help="another encoder than the recipe's (tests: tu-test_resnet)")
    ap.add_argument("--images", type=int, default=400, help="synthetic images when --data is missing")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    data = Path(args.data)
    names = ["inclusion", "patches", "scratches"]
    if not data.is_dir():
        data = make_dataset(Path(tmp.name) / "synth", SynthConfig(images=args.images, seed=1, height=200, width=200))
        names = None
    sets = [f"data.path={data}", "model.encoder_weights=null",
            "data.class_names=null" if names is None else f"data.class_names={names}"]
    if args.encoder:
        sets.append(f"model.encoder={args.encoder}")
    cfg = load_config(ROOT / "configs" / "neu_seg.yaml", sets)
    ds = open_dataset(cfg.data.path, cfg.data.class_names)
    train = ds.split("train") if "train" in ds.splits else ds
    kw = {"channels": cfg.data.channels, "mean": cfg.data.mean, "std": cfg.data.std}
    files = SegmentationSamples(train, train_transform(cfg.data), **kw)
    cached = SegmentationSamples(train, train_transform(cfg.data), **kw)
    t0 = time.perf_counter()
    cached.preload()
    decode_s = time.perf_counter() - t0
    module = SteelsegModule(cfg, ds.class_names)
    model, loss_fn = module.model.train(), module.loss_fn
    opt = torch.optim.AdamW(model.parameters(), cfg.train.lr)
    b = cfg.data.batch_size

    def loader(samples: SegmentationSamples, workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(samples, batch_size=b, shuffle=True, drop_last=True, num_workers=workers,
                                           persistent_workers=workers > 0)

    rows = {"files, 2 workers (baseline)": loader(files, 2), "files, main process": loader(files, 0),
            "data.cache, main process (the recipe)": loader(cached, 0), "data.cache, 2 workers": loader(cached, 2)}
    batches = {name: iter(dl) for name, dl in rows.items()}

    def ms_per_step(name: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            try:
                batch = next(batches[name])
            except StopIteration:
                batches[name] = iter(rows[name])
                batch = next(batches[name])
            x = batch["image"].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), batch["mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / n * 1e3

    for name in rows:  # warm-up: worker start, oneDNN kernels
        ms_per_step(name, 3)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name in rows:
            times[name].append(ms_per_step(name, args.steps))
    print(f"{len(files)} training images from {cfg.data.path}, batch {b}, {torch.get_num_threads()} threads; "
          f"data.cache decoded them in {decode_s:.1f} s ({cached.decoded_bytes() / 2 ** 20:.0f} MiB)")
    base = statistics.median(next(iter(times.values())))
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:40s} {med:6.1f} ms/step  {b / med * 1e3:5.1f} img/s  {base / med:5.2f}x the baseline's speed")
    tmp.cleanup()


if __name__ == "__main__":
    main()
