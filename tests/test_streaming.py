"""Streaming prediction: decoding ahead in a thread keeps order and pixels, and logs see progress with an ETA."""

from __future__ import annotations

import numpy as np
from PIL import Image

from steelseg.inference.predictor import _decoded, _Progress


def test_decoding_ahead_yields_the_same_batches_in_order(tmp_path) -> None:
    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((16, 24), i * 10, np.uint8)).save(p)
        paths.append(p)
    chunks = [paths[i:i + 3] for i in range(0, 7, 3)]
    plain = list(_decoded(chunks, prefetch=False))
    ahead = list(_decoded(chunks, prefetch=True))
    assert [c for c, _ in ahead] == chunks
    for (_, a), (_, b) in zip(plain, ahead):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert [int(im[0, 0]) for _, ims in ahead for im in ims] == [i * 10 for i in range(7)]


def test_progress_lines_say_rate_and_eta(capsys) -> None:
    meter = _Progress(10, bar=False, every=0.0)
    meter.update(4)
    meter.update(6)  # done: no line for the last update
    meter.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("predicted 4/10 (40%),") and "img/s, ETA" in err[0]
