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


def test_small_images_go_in_larger_batches_with_the_same_predictions(tmp_path) -> None:
    """batch_size is for 1600x256 strips; a 200x200 image goes 16 a call (the same pixels, at most 16), and
    the predictions do not depend on the batching."""
    from steelseg.inference.predictor import Predictor

    from .conftest import tiny_bundle_at

    pred = Predictor.from_bundle(tiny_bundle_at(tmp_path, ["a", "b"]))
    assert pred.batch_size == 4
    assert [pred.batch_for(s) for s in [(256, 1600), (500, 1263), (200, 200), (8, 8)]] == [4, 4, 16, 16]
    paths = []
    for i in range(20):
        p = tmp_path / f"{i:02d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 56), dtype=np.uint8)).save(p)
        paths.append(p)
    calls: list[int] = []
    inner = pred._predict_same_size
    pred._predict_same_size = lambda ims, shape: calls.append(len(ims)) or inner(ims, shape)  # type: ignore[method-assign]
    streamed = [p for _, p in pred.predict_paths(paths, prefetch=False)]
    assert calls == [16, 4]  # the folder is read 16 at a time: the first image's header says 40x56
    calls.clear()
    pred.batch_for = lambda shape: 1  # type: ignore[method-assign]
    one_by_one = pred.predict([np.asarray(Image.open(p)) for p in paths])
    assert calls == [1] * 20
    for a, b in zip(streamed, one_by_one):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)
        assert (a.masks == b.masks).all()
