from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steelseg.data import rle
from steelseg.errors import RLEError


def kaggle_mask2rle(img: np.ndarray) -> str:
    """The reference Kaggle encoder, kept here to check byte-identical output."""
    pixels = np.concatenate([[0], img.T.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(
    lambda hw: arrays(np.uint8, hw, elements=st.integers(0, 1))
)


@settings(max_examples=300, deadline=None)
@given(masks)
def test_round_trip_matches_kaggle(mask: np.ndarray) -> None:
    code = rle.encode(mask)
    assert code == kaggle_mask2rle(mask)
    assert np.array_equal(rle.decode(code, mask.shape), mask)
    assert rle.rle_area(code) == int(mask.sum())


@pytest.mark.parametrize("shape", [(256, 1600), (7, 13), (1, 1), (1, 9), (9, 1)])
def test_edge_masks(shape: tuple[int, int]) -> None:
    h, w = shape
    empty = np.zeros(shape, np.uint8)
    assert rle.encode(empty) == ""
    assert np.array_equal(rle.decode("", shape), empty)
    full = np.ones(shape, np.uint8)
    assert rle.encode(full) == f"1 {h * w}"
    assert np.array_equal(rle.decode(f"1 {h * w}", shape), full)
    first = empty.copy()
    first[0, 0] = 1
    assert rle.encode(first) == "1 1"
    last = empty.copy()
    last[-1, -1] = 1
    assert rle.encode(last) == f"{h * w} 1"
    assert np.array_equal(rle.decode(f"{h * w} 1", shape), last)


def test_run_crossing_column_boundary() -> None:
    mask = np.zeros((4, 3), np.uint8)
    mask[2:, 0] = 1  # bottom of column 0 ...
    mask[:2, 1] = 1  # ... continues at the top of column 1: one run
    assert rle.encode(mask) == "3 4"
    assert np.array_equal(rle.decode("3 4", (4, 3)), mask)


def test_non_binary_and_bool_masks() -> None:
    m = np.zeros((5, 11), np.uint8)
    m[1:3, 2:9] = 255
    assert rle.encode(m) == rle.encode(m > 0) == rle.encode((m > 0).astype(np.float32))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 2 x 4", "non-integer token 'x'"),
        ("1.5 2", "non-integer token '1.5'"),
        ("0 3", "starts at 0"),
        ("-2 3", "starts at -2"),
        ("1 0", "length 0"),
        ("5 2 1 2", "unsorted runs"),
        ("1 5 3 2", "overlapping runs"),
        ("10 5", "past the image end"),
    ],
)
def test_bad_strings(code: str, message: str) -> None:
    with pytest.raises(RLEError, match=message):
        rle.decode(code, (3, 4))


def test_encode_needs_2d() -> None:
    with pytest.raises(RLEError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))


def test_real_severstal_strings_round_trip(severstal_real) -> None:
    with open(severstal_real / "train.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 13
    for row in rows:
        mask = rle.decode(row["EncodedPixels"], (256, 1600))
        assert mask.any()
        assert rle.encode(mask) == row["EncodedPixels"]
