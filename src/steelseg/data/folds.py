"""K-fold splits: stratified multi-label on per-class presence (defect-free is its own label), or, when the
images come in groups (the parts of KolektorSDD, the coils of a line), grouped: no group in two folds,
stratified over groups as far as the groups allow (scikit-learn's ``StratifiedGroupKFold``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from steelseg.data.table import DefectDataset
from steelseg.errors import DataError

__all__ = ["GROUP_BY", "fold_split", "image_groups", "make_folds", "read_folds", "write_folds"]

GROUP_BY = ("folder", "none")  # data.group_by / --group-by; null = the layout's groups when it has them


def image_groups(dataset: DefectDataset, group_by: str | None = None) -> list[str] | None:
    """Each image's group: the layout's (``group_by`` None), the first folder of its image id
    (``"folder"``), or none (``"none"``, or a layout without groups)."""
    if group_by not in (None, *GROUP_BY):
        raise DataError(f"group_by {group_by!r}: not one of {', '.join(GROUP_BY)} (or null for the layout's groups)")
    if group_by == "none":
        return None
    if group_by == "folder":
        ids = dataset.image_ids
        flat = [i for i in ids if "/" not in i]
        if flat:
            raise DataError(f"{dataset.root}: group_by folder, but image ids such as {flat[0]!r} are in no folder")
        return [i.split("/")[0] for i in ids]
    return dataset.groups


def _rarest_label(dataset: DefectDataset) -> np.ndarray:
    """One label per image for single-label stratification: 0 defect-free, else 1 + its rarest class."""
    pres = dataset.presence()
    freq = pres.sum(axis=0).astype(float)
    rank = np.where(pres, freq[None, :], np.inf)
    return np.where(pres.any(axis=1), 1 + rank.argmin(axis=1), 0)


def make_folds(dataset: DefectDataset, k: int = 5, seed: int = 42, groups: list[str] | None = None) -> pd.DataFrame:
    """Assign each image a fold in 0..k-1, balancing every class and the defect-free share.

    Without groups: iterative stratification (Sechidis et al. 2011, the ``iterative-stratification``
    package), which keeps rare classes spread over all folds where plain KFold would not. With
    ``groups`` (one per image): ``StratifiedGroupKFold`` on each image's rarest class, so a group's images
    share a fold.
    """
    n = len(dataset.table)
    if k < 2:
        raise DataError(f"need at least 2 folds, got {k}")
    if n < k:
        raise DataError(f"{dataset.root}: {n} images cannot fill {k} folds")
    folds = np.zeros(n, dtype=int)
    if groups is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        if len(set(groups)) < k:
            raise DataError(f"{dataset.root}: {len(set(groups))} groups cannot fill {k} folds")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        split = splitter.split(np.zeros(n), _rarest_label(dataset), groups)
    else:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        pres = dataset.presence()
        labels = np.concatenate([pres, ~pres.any(axis=1, keepdims=True)], axis=1).astype(int)
        split = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n), labels)
    for fold, (_, val_idx) in enumerate(split):
        folds[val_idx] = fold
    out = pd.DataFrame({"image_id": dataset.table["image_id"].to_numpy(), "fold": folds})
    if groups is not None:
        out["group"] = groups
    return out


def write_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    """Write a folds CSV atomically. An existing file is replaced only when it is a folds file itself (its header
    ``image_id,fold``): a dataset's labels (``train.csv``, a COCO JSON, a split list) are never a target."""
    from steelseg.fsutil import atomic_write

    path = Path(path)
    if path.exists():
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                head = fh.readline().strip()
        except OSError:
            head = ""
        if not head.startswith("image_id,fold") or path.is_dir():
            raise DataError(f"{path}: exists and is not a folds file (its first line is {head[:60]!r}); steelseg "
                            "never writes over a dataset's own files: give --out another path")
    with atomic_write(path, "w", newline="") as fh:
        folds.to_csv(fh, index=False)
    return path


def read_folds(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: folds file not found; create it with `steelseg folds DATA --out {path}`")
    folds = pd.read_csv(path, dtype={"image_id": str})
    if list(folds.columns[:2]) != ["image_id", "fold"]:
        raise DataError(f"{path}: expected columns image_id,fold, got {','.join(folds.columns)}")
    return folds


def fold_split(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) for one fold."""
    if fold not in set(folds["fold"]):
        raise DataError(f"fold {fold} not in folds file (folds: {sorted(set(folds['fold']))})")
    val = folds["fold"] == fold
    return folds.loc[~val, "image_id"].tolist(), folds.loc[val, "image_id"].tolist()
