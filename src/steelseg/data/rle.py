"""Run-length encoding of masks in the Kaggle Severstal convention. NumPy only.

Convention: the mask is flattened column-major (top to bottom, then left to right), pixels are
numbered from 1, and the string holds ``start length`` pairs separated by spaces. An empty mask is
the empty string. Runs may cross a column boundary.
"""

from __future__ import annotations

import numpy as np

from steelseg.errors import RLEError

__all__ = ["MAX_RLE_CHARS", "RLEError", "allow_long_csv_fields", "decode", "encode", "parse", "rle_area"]

# A noisy 1600x256 mask has up to 204,800 runs: about 3 MB of text, far past the csv module's
# default field limit of 128 KiB. Readers of RLE CSVs raise the limit through this one helper.
MAX_RLE_CHARS = 1 << 26


def allow_long_csv_fields() -> None:
    """Let ``csv`` read RLE fields of any real mask (call before reading a train or submission CSV)."""
    import csv

    if csv.field_size_limit() < MAX_RLE_CHARS:
        csv.field_size_limit(MAX_RLE_CHARS)


_LUT_CAP = 1 << 20  # numbers below this are formatted from a table (8 bytes each, 8 MiB at most)
_lut: np.ndarray | None = None


def _digit_table(limit: int) -> np.ndarray:
    """For each number below ``limit`` (rounded up to a power of two), its decimal digits, a space
    and zero padding as 8 bytes, viewed as one uint64 so a gather moves a whole row at once."""
    global _lut
    if _lut is None or len(_lut) < limit:
        size = min(_LUT_CAP, 1 << max(16, (limit - 1).bit_length()))
        v = np.arange(size, dtype=np.int64)
        ndig = 1 + sum((v >= 10**p).astype(np.int64) for p in range(1, 7))
        right = np.empty((size, 7), np.uint8)  # right-aligned, zero-filled digits
        rest = v.copy()
        for col in range(6, -1, -1):
            right[:, col] = rest % 10 + 48
            rest //= 10
        inside = np.arange(8)[None, :] < ndig[:, None]
        rows, cols = np.nonzero(inside)
        table = np.zeros((size, 8), np.uint8)
        table[rows, cols] = right[rows, cols + 7 - ndig[rows]]
        table[np.arange(size), ndig] = 32  # the separating space
        _lut = table.view(np.uint64).reshape(-1)
    return _lut


def _format(values: np.ndarray) -> str:
    """Numbers to 'a b c ...': rows of a digit table gathered at once instead of str() per number."""
    if values.size and int(values.max()) < _LUT_CAP:
        chars = _digit_table(int(values.max()) + 1)[values].view(np.uint8)
        return chars[chars != 0][:-1].tobytes().decode("ascii")
    items = values.tolist()
    return (b"%d " * len(items) % tuple(items))[:-1].decode("ascii")


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = defect) as a Kaggle RLE string.

    Runs are found without transposing the mask: vertical changes are compared eight pixels at a
    time as 64-bit words of neighbouring rows, column wraps are checked separately, and only the
    few transition positions are then sorted into column-major order.
    """
    if mask.ndim != 2:
        raise RLEError(f"encode expects a 2-D (H, W) mask, got shape {mask.shape}")
    h, w = mask.shape
    # Raw bytes are compared (no pass to make 0/1 first); 1 vs 255 is then told apart per hit below.
    m = np.ascontiguousarray(mask if mask.dtype in (np.bool_, np.uint8) else mask != 0).view(np.uint8)
    if w % 8:
        padded = np.zeros((h, w + 8 - w % 8), np.uint8)
        padded[:, :w] = m
        m = padded
    words = m.view(np.uint64)  # (h, w / 8): eight pixels of one row per word
    diff = (words[1:] ^ words[:-1]).reshape(-1)
    hits = np.flatnonzero(diff != 0)  # nonzero on a bool array is far faster than on uint64
    row, word = np.divmod(hits, words.shape[1])
    below = words[1:].reshape(-1)[hits].view(np.uint8)
    above = words[:-1].reshape(-1)[hits].view(np.uint8)
    lanes = np.flatnonzero((below != 0) != (above != 0))  # which of the 8 pixels changed state
    hit = lanes >> 3
    inner = (word[hit] * 8 + (lanes & 7)) * h + row[hit] + 1
    # Where one column ends and the next begins, and the very first and last pixels.
    first, last = m[0, :w] != 0, m[h - 1, :w] != 0
    wraps = np.flatnonzero(first != np.concatenate(([False], last[:-1]))) * h
    tail = [h * w] if last[-1] else []
    edges = np.sort(np.concatenate((inner, wraps, np.asarray(tail, np.int64))))
    if not edges.size:
        return ""
    edges[1::2] -= edges[::2]
    edges[::2] += 1
    return _format(edges)


_MAX_VALUE = 1 << 48  # no image has more pixels; keeps start + length far from int64 overflow
_MAX_DIGITS = 15


def _fast_values(rle: str) -> np.ndarray | None:
    """Parse in C when the string holds only numbers and single spaces; None otherwise."""
    try:
        raw = rle.encode("ascii")
    except UnicodeEncodeError:
        return None
    raw = raw.strip()
    if not raw:
        return np.zeros(0, np.int64)
    # fromstring stops at the first character it cannot read (a letter, '.', '1e5'), and takes tabs
    # or double spaces as one separator: a count that differs from the spaces sends the string to the
    # checked path, which names the bad token. Numbers too large for int64 saturate, caught in parse.
    try:
        values = np.fromstring(raw, dtype=np.int64, sep=" ")
    except ValueError:  # newer NumPy raises where older ones stopped early
        return None
    return values if values.size == raw.count(b" ") + 1 else None


def _checked_values(rle: str) -> np.ndarray:
    """Slow path that names the offending token."""
    tokens = rle.split()
    for t in tokens:
        if t.lstrip("+-").isdigit() and len(t.lstrip("+-")) > _MAX_DIGITS:
            raise RLEError(f"number {t} in the RLE is larger than any image: the mask does not fit the image size")
    try:
        return np.array(list(map(int, tokens)), dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
        raise RLEError(f"non-integer token {bad!r}: RLE holds only whole numbers") from None


def parse(rle: str | float | None, n_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string into 0-based ``starts`` and ``lengths`` arrays.

    ``None``, NaN and empty strings are an empty mask. With ``n_pixels`` the runs must end inside
    the image. Raises :class:`RLEError` saying what is wrong.
    """
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    values = _fast_values(rle)
    if values is None:
        values = _checked_values(rle)
    if not values.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if values.size % 2:
        raise RLEError(f"odd number of tokens ({values.size}): RLE needs 'start length' pairs")
    limit = _MAX_VALUE if n_pixels is None else n_pixels
    if int(values.max()) > limit:  # also stops int64 overflow in the sums below
        big = int(values.max())
        where = f"the image ({n_pixels} pixels)" if n_pixels is not None else f"any image ({_MAX_VALUE})"
        raise RLEError(f"number {big} in the RLE is larger than {where}: the mask does not fit the image size")
    starts, lengths = values[::2], values[1::2]
    ends = starts + lengths  # 1-based, exclusive
    # One cheap pass for the common valid case; the detailed checks only run to name an error.
    if (
        starts[0] >= 1
        and lengths.min() >= 1
        and (starts.size == 1 or bool((starts[1:] >= ends[:-1]).all()))
        and (n_pixels is None or ends[-1] - 1 <= n_pixels)
    ):
        return starts - 1, lengths
    _explain(starts, lengths, ends, n_pixels)
    return starts - 1, lengths


def _explain(starts: np.ndarray, lengths: np.ndarray, ends: np.ndarray, n_pixels: int | None) -> None:
    if (starts < 1).any():
        i = int(np.argmax(starts < 1))
        raise RLEError(f"run {i + 1} starts at {starts[i]}: starts are 1-indexed and must be >= 1")
    if (lengths < 1).any():
        i = int(np.argmax(lengths < 1))
        raise RLEError(f"run {i + 1} has length {lengths[i]}: lengths must be >= 1")
    bad_order = starts[1:] < ends[:-1]
    if bad_order.any():
        i = int(np.argmax(bad_order)) + 1
        what = "unsorted" if starts[i] < starts[i - 1] else "overlapping"
        raise RLEError(
            f"{what} runs: run {i + 1} starts at {starts[i]} but run {i} covers "
            f"{starts[i - 1]}..{ends[i - 1] - 1}; runs must be sorted and disjoint"
        )
    raise RLEError(
        f"run ends at pixel {ends[-1] - 1}, past the image end ({n_pixels} pixels): "
        "the mask does not fit the image size"
    )


def decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into an (H, W) ``uint8`` mask of 0 and 1.

    The result is a Fortran-ordered array (the natural order of the encoding); call
    ``np.ascontiguousarray`` if C order matters to you.
    """
    height, width = int(shape[0]), int(shape[1])
    n = height * width
    counts = _run_counts(rle, n)
    if counts is None:  # not the common valid case: parse names the problem (or an empty mask)
        starts, lengths = parse(rle, n)
        counts = _counts_from_runs(starts, lengths, n)
    values = np.zeros(counts.size, np.uint8)
    values[1::2] = 1
    # Alternate gap / run counts and let np.repeat write every pixel in one C loop.
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def _counts_from_runs(starts: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """0-based starts and lengths -> alternating gap / run pixel counts that add up to ``n``."""
    edges = np.empty(2 * starts.size + 2, np.int64)
    edges[0], edges[-1] = 0, n
    edges[1:-1:2] = starts
    edges[2:-1:2] = starts + lengths
    return np.diff(edges)


def _run_counts(rle: str | float | None, n: int) -> np.ndarray | None:
    """Gap / run counts straight from a valid, non-empty string; None for anything else."""
    if not isinstance(rle, str):
        return None
    values = _fast_values(rle)
    if values is None or not values.size or values.size % 2 or int(values.max()) > n:
        return None
    counts = _counts_from_runs(values[::2] - 1, values[1::2], n)
    # starts >= 1, sorted and disjoint, inside the image <=> every gap >= 0; every run >= 1
    if counts.min() < 0 or counts[1::2].min() < 1:
        return None
    return counts


def rle_area(rle: str | float | None, n_pixels: int | None = None) -> int:
    """Number of mask pixels in an RLE string, without decoding it."""
    return int(parse(rle, n_pixels)[1].sum())
