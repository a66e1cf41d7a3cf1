"""The data side of a run: which images train and validate (folds file, named splits, the dataset's own
lists, or new stratified folds), the DataLoaders (augmentation, balanced sampling, ``data.cache``) and
each loader worker's own augmentation stream."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, WeightedRandomSampler

from steelseg.data.augment import stream_seed, train_transform
from steelseg.data.combine import PSEUDO_FILE, ExtraSet, combine
from steelseg.data.folds import fold_split, image_groups, make_folds, read_folds, write_folds
from steelseg.data.open import open_dataset
from steelseg.data.samples import SegmentationSamples
from steelseg.data.table import DefectDataset
from steelseg.errors import ConfigError
from steelseg.machine import available_memory
from steelseg.training.config import RunConfig

__all__ = ["TrainingData", "add_extra", "make_loaders", "open_training_data", "resolve_split", "seed_worker",
           "split_groups"]


class TrainingData:
    """The main dataset, the extra folders of ``data.extra``, and the two as one table."""

    def __init__(self, main: DefectDataset, combined: DefectDataset, extras: list[tuple[ExtraSet, DefectDataset]]):
        self.main, self.combined, self.extras = main, combined, extras
        self.main_ids = set(main.image_ids)


def open_training_data(cfg: RunConfig) -> TrainingData:
    """``data.path`` and every ``data.extra`` folder, opened (a bad folder fails here, naming it)."""
    d = cfg.data
    main = open_dataset(d.path, d.class_names, layout=d.layout, options=d.layout_options)
    opened = []
    for path in d.extra:
        if not Path(path).exists():
            raise ConfigError(f"data.extra: {path} does not exist")
        if d.extra_in_val and (Path(path) / PSEUDO_FILE).is_file():
            raise ConfigError(f"data.extra_in_val: {path} holds pseudo-labels ({PSEUDO_FILE}); they train, never "
                              "validate (a model would be scored on its own predictions)")
        opened.append((path, open_dataset(path, main.class_names if _unnamed(path) else None)))
    combined, sets = combine(main, opened)
    return TrainingData(main, combined, [(s, ds) for s, (_, ds) in zip(sets, opened)])


def _unnamed(path: str) -> bool:
    from steelseg.data.table import read_class_names

    return read_class_names(Path(path)) is None


def add_extra(cfg: RunConfig, data: TrainingData, train: list[str], val: list[str],
              how: str) -> tuple[list[str], list[str], str, dict[str, Any]]:
    """The split with the extra images added: to training only, or (``data.extra_in_val``) split by
    the same fold rule as new folds. Returns the split and what split.json records of the extras."""
    record: dict[str, Any] = {}
    held_out = set(_pixel_hashes(data.main, [i for i in val + data.main.splits.get("test", []) if i in data.main_ids])
                   .values()) if data.extras else set()
    for s, ds in data.extras:
        leaked = [i for i, h in zip(ds.image_ids, _pixel_hashes(ds, ds.image_ids).values()) if h in held_out]
        if leaked:  # a validation image back under another name (a review, a pseudo-label): it would leak
            print(f"data.extra {s.path}: {len(leaked)} image(s) are validation or test images of {cfg.data.path} "
                  f"under another name (same pixels, e.g. {leaked[0]}); left out of training (split.json says)",
                  file=sys.stderr)
            ds = ds.subset([i for i in ds.image_ids if i not in set(leaked)])
        groups = image_groups(ds, None)
        k = min(5, len(ds.table), len(set(groups)) if groups is not None else len(ds.table))
        if cfg.data.extra_in_val and k >= 2:
            folds = make_folds(ds, k=k, seed=cfg.train.seed, groups=groups)
            tr, va = fold_split(folds, cfg.data.fold % k)
            tr, va = [s.prefix + i for i in tr], [s.prefix + i for i in va]
        else:
            tr, va = [s.prefix + i for i in ds.image_ids], []
        train, val = train + tr, val + va
        record[s.path] = {"prefix": s.prefix, "layout": s.layout, "images": len(s.image_ids), "train": len(tr),
                          "val": len(va), "left_out_as_validation_images": len(leaked)}
    if record:
        n_tr = sum(r["train"] for r in record.values())
        n_va = sum(r["val"] for r in record.values())
        how += f"; + {n_tr} extra image(s) in training" + (f", {n_va} in validation" if n_va else
                                                           " (data.extra, kept out of validation)")
    return train, val, how, record


def _pixel_hashes(ds: DefectDataset, ids: list[str]) -> dict[str, str]:
    """Image id -> a hash of its decoded pixels (the same strip saved under another name or format matches)."""
    import hashlib

    from steelseg.data.images import read_image

    out = {}
    for i in ids:
        img = read_image(ds.row(i)["path"], None)
        out[i] = hashlib.sha256(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()
    return out


def resolve_split(cfg: RunConfig, ds: DefectDataset, run_dir: Path | None = None) -> tuple[list[str], list[str], str]:
    """(train ids, val ids, how): folds file > named splits > the dataset's train/val > new folds (grouped
    when the images come in groups, ``data.group_by``)."""
    d = cfg.data
    if d.folds:
        train, val = fold_split(read_folds(d.folds), d.fold)
        return train, val, f"fold {d.fold} of {d.folds}"
    if d.train_split or d.val_split:
        if not (d.train_split and d.val_split):
            raise ConfigError("data.train_split and data.val_split go together")
        return ds.split(d.train_split).image_ids, ds.split(d.val_split).image_ids, \
            f"splits {d.train_split}/{d.val_split}"
    if "train" in ds.splits and "val" in ds.splits:
        return ds.splits["train"], ds.splits["val"], "the dataset's train/val lists"
    groups = image_groups(ds, d.group_by)
    folds = make_folds(ds, k=5, seed=cfg.train.seed, groups=groups)
    if run_dir is not None:
        write_folds(folds, run_dir / "folds.csv")
    train, val = fold_split(folds, d.fold)
    grouped = f", grouped: {len(set(groups))} groups kept whole" if groups is not None else ""
    return train, val, f"fold {d.fold} of 5 new stratified folds (seed {cfg.train.seed}{grouped})"


def split_groups(ds: DefectDataset, group_by: str | None, train: list[str], val: list[str]) -> dict[str, list[str]] | None:
    """The groups on each side of a split (for split.json); a group on both sides is named in a warning:
    its images look alike, so the validation score would be optimistic."""
    groups = image_groups(ds, group_by)
    if groups is None:
        return None
    of = dict(zip(ds.image_ids, groups))
    sides = {"train": sorted({of[i] for i in train}), "val": sorted({of[i] for i in val})}
    both = sorted(set(sides["train"]) & set(sides["val"]))
    if both:
        print(f"warning: {len(both)} group(s) have images in both training and validation ({', '.join(both[:5])}"
              f"{' ...' if len(both) > 5 else ''}): the validation score will be optimistic; make grouped folds "
              "with `steelseg folds DATA` or set data.group_by", file=sys.stderr)
    return sides


def _balanced_weights(ds: DefectDataset) -> np.ndarray:
    """Per-image sampling weights so each class (and defect-free) is drawn about equally often."""
    pres = ds.presence()
    labels = np.concatenate([pres, ~pres.any(1, keepdims=True)], axis=1)
    freq = labels.sum(0).clip(min=1)
    return (labels / freq).max(1)


def make_loaders(cfg: RunConfig, train_ds: DefectDataset, val_ds: DefectDataset) -> tuple[Any, Any]:
    d = cfg.data
    train_sizes = set(zip(train_ds.table["height"], train_ds.table["width"]))
    if len(train_sizes) > 1 and not d.crop:
        raise ConfigError(f"{d.path}: training images come in {len(train_sizes)} sizes; set data.crop: [h, w] "
                          "so batches share one size (smaller images are padded)")
    # Validation runs at full size: images of several sizes go one at a time.
    mixed_val = len(set(zip(val_ds.table["height"], val_ds.table["width"]))) > 1
    kw = {"channels": d.channels, "mean": d.mean, "std": d.std}
    rank = getattr(rank_zero_only, "rank", 0) or 0  # from the environment under DDP: ranks augment differently
    seed = None if cfg.train.seed is None else stream_seed(cfg.train.seed, rank)
    train_set = SegmentationSamples(train_ds, train_transform(d, seed=seed), **kw)
    val_set = SegmentationSamples(val_ds, None, **kw)
    if d.cache:
        devices = str(cfg.train.devices)  # under DDP each process on this machine keeps a copy
        _preload(train_set, val_set, copies=int(devices) if devices.isdigit() else 1)
    sampler = None
    if d.balanced_sampling:
        w = torch.as_tensor(_balanced_weights(train_ds), dtype=torch.double)
        sampler = WeightedRandomSampler(w, num_samples=len(w), replacement=True)
    common = {"num_workers": d.num_workers, "persistent_workers": d.num_workers > 0,
              "pin_memory": torch.cuda.is_available()}
    train = DataLoader(train_set, batch_size=d.batch_size, shuffle=sampler is None, sampler=sampler,
                       drop_last=len(train_set) > d.batch_size, worker_init_fn=seed_worker, **common)
    val = DataLoader(val_set, batch_size=1 if mixed_val else (d.val_batch_size or d.batch_size), shuffle=False,
                     **common)
    return train, val


def _preload(*sets: SegmentationSamples, copies: int = 1) -> None:
    """``data.cache``: decode the sets into memory once, after checking that they fit (``copies``
    processes on this machine each keep one)."""
    one = sum(s.decoded_bytes() for s in sets)
    need = one * max(1, copies)
    free = available_memory()
    gib = 2 ** 30
    if free is not None and need > free / 2:
        raise ConfigError(f"data.cache: the decoded images and masks need about {need / gib:.1f} GiB, more than "
                          f"half of the {free / gib:.1f} GiB of free memory; set data.cache: false (read the "
                          "files each epoch) or train on a smaller set")
    t0 = time.time()
    show = sys.stderr.isatty()
    for s, desc in zip(sets, ("caching training images", "caching validation images")):
        s.preload(desc, progress=show)
    print(f"data.cache: {sum(len(s) for s in sets)} images and masks decoded into memory "
          f"({one / 2 ** 20:.0f} MiB) in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Lightning's per-worker seeding of torch / numpy / random, then
    the worker's own augmentation stream from its torch seed (which the main process's seeded
    generator draws, so a run repeats) and the process rank (DDP ranks differ)."""
    import torch
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(stream_seed(info.seed, getattr(rank_zero_only, "rank", 0) or 0))
