from __future__ import annotations

import pandas as pd
import pytest

from steelseg.data.folds import fold_split, make_folds, read_folds, write_folds
from steelseg.data.open import open_dataset
from steelseg.errors import DataError


def test_folds_stratified_and_deterministic(synth_full, tmp_path) -> None:
    ds = open_dataset(synth_full)
    a = make_folds(ds, k=3, seed=1)
    b = make_folds(ds, k=3, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert sorted(a["fold"].unique()) == [0, 1, 2]
    assert a["image_id"].tolist() == ds.image_ids
    pres = ds.presence()
    free = ~pres.any(1)
    for f in range(3):
        sel = (a["fold"] == f).to_numpy()
        # every fold gets a fair share of defect-free and of the common class
        assert abs(free[sel].sum() - free.sum() / 3) <= 1.5
        assert abs(pres[sel, 2].sum() - pres[:, 2].sum() / 3) <= 1.5
    path = write_folds(a, tmp_path / "folds.csv")
    back = read_folds(path)
    train, val = fold_split(back, 0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(ds.table)


def test_folds_errors(synth_full, tmp_path) -> None:
    ds = open_dataset(synth_full)
    with pytest.raises(DataError, match="cannot fill"):
        make_folds(ds.subset(ds.image_ids[:2]), k=3)
    with pytest.raises(DataError, match="not found"):
        read_folds(tmp_path / "nope.csv")
