"""Stratified multi-label K-fold splits on per-class presence (defect-free is its own label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from steelseg.data.table import DefectDataset
from steelseg.errors import DataError

__all__ = ["make_folds", "read_folds", "write_folds", "fold_split"]


def make_folds(dataset: DefectDataset, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign each image a fold in 0..k-1, balancing every class and the defect-free share.

    Uses iterative stratification (Sechidis et al. 2011, the ``iterative-stratification``
    package), which keeps rare classes spread over all folds where plain KFold would not.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    n = len(dataset.table)
    if k < 2:
        raise DataError(f"need at least 2 folds, got {k}")
    if n < k:
        raise DataError(f"{dataset.root}: {n} images cannot fill {k} folds")
    pres = dataset.presence()
    labels = np.concatenate([pres, ~pres.any(axis=1, keepdims=True)], axis=1).astype(int)
    folds = np.zeros(n, dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val_idx) in enumerate(splitter.split(np.zeros(n), labels)):
        folds[val_idx] = fold
    return pd.DataFrame({"image_id": dataset.table["image_id"].to_numpy(), "fold": folds})


def write_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folds.to_csv(path, index=False)
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
