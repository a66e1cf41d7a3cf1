from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from steelseg.data import rle
from steelseg.data.convert import convert_to_kaggle
from steelseg.data.open import open_dataset
from steelseg.data.samples import SegmentationSamples
from steelseg.errors import DataError, RLEError

from .conftest import write_voc


def test_real_severstal_loads(severstal_real) -> None:
    ds = open_dataset(severstal_real)
    assert ds.layout == "kaggle" and len(ds.table) == 11 and ds.num_classes == 4
    assert ds.presence().sum(0).tolist() == [3, 1, 5, 4]
    for image_id in ds.image_ids:
        img, mask = ds.load_image(image_id), ds.load_mask(image_id)
        assert img.shape == (256, 1600) and mask.shape == (256, 1600, 4)
        assert mask.reshape(-1, 4).sum(0).tolist() == ds.areas()[ds.image_ids.index(image_id)].tolist()


def test_neu_seg_counts(neu_seg) -> None:
    ds = open_dataset(neu_seg, class_names=["inclusion", "patches", "scratches"])
    assert ds.layout == "masks" and len(ds.table) == 4023
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 3129, "val": 894}
    assert ds.split("train").presence().sum(0).tolist() == [1285, 1266, 1249]
    assert ds.split("val").presence().sum(0).tolist() == [370, 351, 357]
    mask = ds.load_mask(ds.image_ids[0])
    assert mask.shape == (200, 200, 3)


def test_synth_kaggle_layout(synth_full) -> None:
    ds = open_dataset(synth_full)
    s = ds.summary()
    assert s["images"] == 24 and s["image_sizes"] == ["1600x256"]
    assert ds.class_names == ["pits", "streaks", "scratches", "blotches"]
    assert all(c["images"] > 0 for c in s["classes"])  # every class at least once
    assert 0.2 < s["defect_free_share"] < 0.7


def test_synth_deterministic(tmp_path) -> None:
    from steelseg.data.synth import SynthConfig, make_dataset

    a = make_dataset(tmp_path / "a", SynthConfig(images=5, seed=11, height=64, width=256))
    b = make_dataset(tmp_path / "b", SynthConfig(images=5, seed=11, height=64, width=256))
    assert (a / "train.csv").read_text() == (b / "train.csv").read_text()


def test_old_csv_format(synth_full, tmp_path) -> None:
    ds = open_dataset(synth_full)
    root = tmp_path / "old"
    shutil.copytree(synth_full / "train_images", root / "train_images")
    lines = ["ImageId_ClassId,EncodedPixels"]
    for image_id in ds.image_ids:
        for c in range(1, 5):
            lines.append(f"{image_id}_{c},{ds.masks.rles.get((image_id, c), '')}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    old = open_dataset(root)
    assert old.areas().tolist() == ds.areas().tolist()


def test_mask_folder_layout_and_convert(tmp_path) -> None:
    a = np.zeros((20, 30), np.uint8)
    a[2:5, 3:9] = 1
    a[10:12, :] = 2
    b = np.zeros((20, 30), np.uint8)
    root = write_voc(tmp_path / "voc", {"a": a, "b": b}, {"train": ["a"], "val": ["b"]})
    ds = open_dataset(root)
    assert ds.num_classes == 2 and ds.splits == {"train": ["a"], "val": ["b"]}
    assert ds.table["area_1"].tolist() == [18, 0] and ds.table["area_2"].tolist() == [60, 0]
    mask = ds.load_mask("a")
    assert mask.shape == (20, 30, 2) and mask[..., 0].sum() == 18
    out = convert_to_kaggle(ds, tmp_path / "kag")
    back = open_dataset(out)
    assert back.layout == "kaggle" and back.image_ids == ["a.jpg", "b.jpg"]
    assert np.array_equal(back.load_mask("a.jpg"), mask)
    assert back.splits == {"train": ["a.jpg"], "val": ["b.jpg"]}


def test_samples_for_torch(synth_full) -> None:
    ds = open_dataset(synth_full)
    item = SegmentationSamples(ds)[0]
    assert item["image"].shape == (1, 256, 1600) and item["image"].dtype == np.float32
    assert item["mask"].shape == (4, 256, 1600) and item["labels"].shape == (4,)


# ---- bad inputs: each gets its own clear error ------------------------------------------------
def _kaggle_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_image(synth_full, tmp_path) -> None:
    root = _kaggle_copy(synth_full, tmp_path / "d")
    with open(root / "train.csv", "a") as fh:
        fh.write("nothere.jpg,1,1 5\n")
    with pytest.raises(DataError, match=r"train.csv:\d+: image 'nothere.jpg' not found"):
        open_dataset(root)


def test_mask_does_not_fit(synth_full, tmp_path) -> None:
    root = _kaggle_copy(synth_full, tmp_path / "d")
    name = sorted((root / "train_images").iterdir())[0].name
    with open(root / "train.csv", "a") as fh:
        fh.write(f"{name},2,409600 5\n")
    with pytest.raises(RLEError, match=r"train.csv:\d+: image .* past the image end"):
        open_dataset(root)


def test_bad_rle_names_file_and_line(synth_full, tmp_path) -> None:
    root = _kaggle_copy(synth_full, tmp_path / "d")
    name = sorted((root / "train_images").iterdir())[0].name
    with open(root / "train.csv", "a") as fh:
        fh.write(f"{name},2,1 2 3\n")
    n_lines = len((root / "train.csv").read_text().splitlines())
    with pytest.raises(RLEError, match=rf"train.csv:{n_lines}: .*odd number of tokens"):
        open_dataset(root)


def test_unknown_class_id(synth_full, tmp_path) -> None:
    root = _kaggle_copy(synth_full, tmp_path / "d")
    name = sorted((root / "train_images").iterdir())[0].name
    with open(root / "train.csv", "a") as fh:
        fh.write(f"{name},7,1 5\n")
    with pytest.raises(DataError, match="unknown class id 7; valid ids are 1..4"):
        open_dataset(root)


def test_duplicate_rows(synth_full, tmp_path) -> None:
    root = _kaggle_copy(synth_full, tmp_path / "d")
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match=r"duplicate row .* \(first at line 2\)"):
        open_dataset(root)


def test_unreadable_and_truncated_images(synth_full, tmp_path) -> None:
    root = _kaggle_copy(synth_full, tmp_path / "d")
    images = sorted((root / "train_images").iterdir())
    data = images[0].read_bytes()
    images[0].write_bytes(data[: len(data) // 3])  # truncated JPEG: header fine, pixels cut
    ds = open_dataset(root)
    with pytest.raises(DataError, match="truncated"):
        ds.load_image(images[0].name)
    images[1].write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="not a readable image"):
        open_dataset(root)


def test_mask_folder_errors(tmp_path) -> None:
    a = np.zeros((8, 8), np.uint8)
    a[0, 0] = 5
    root = write_voc(tmp_path / "v1", {"a": a})
    with pytest.raises(DataError, match="unknown class id 5"):
        open_dataset(root, class_names=["x", "y"])
    root = write_voc(tmp_path / "v2", {"a": np.zeros((8, 8), np.uint8)})
    from PIL import Image

    Image.fromarray(np.zeros((9, 8), np.uint8)).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(DataError, match="must match their image size"):
        open_dataset(root)
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DataError, match="mask without an image"):
        open_dataset(root)


def test_no_dataset(tmp_path) -> None:
    with pytest.raises(DataError, match="no dataset found"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")


def test_rle_decode_matches_area(synth_full) -> None:
    ds = open_dataset(synth_full)
    for (image_id, c), code in list(ds.masks.rles.items())[:5]:
        assert rle.decode(code, (256, 1600)).sum() == ds.table.set_index("image_id").loc[image_id, f"area_{c}"]


def test_cache_gives_the_same_items_read_only(synth_small) -> None:
    """data.cache: preload() keeps the decoded arrays; items equal the ones read from the files, the
    kept copy cannot be written (a transform writing into its input fails, not the next epoch), and
    the real training transform (flips, brightness/contrast, shift) runs on it unchanged."""
    from steelseg.data.augment import train_transform
    from steelseg.training.config import DataConfig

    ds = open_dataset(synth_small)
    files, kept = SegmentationSamples(ds), SegmentationSamples(ds)
    assert kept.decoded_bytes() == 48 * 64 * 320 * (1 + 4)  # uint8 image + 4 mask channels
    kept.preload()
    for i in (0, 7, 47):
        a, b = files[i], kept[i]
        assert a["image_id"] == b["image_id"]
        for key in ("image", "mask", "labels"):
            assert np.array_equal(a[key], b[key])
    image, mask = kept._read(3)
    assert not image.flags.writeable and not mask.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0] = 1
    before = [(im.copy(), m.copy()) for im, m in (kept._read(i) for i in range(len(kept)))]
    aug = SegmentationSamples(ds, train_transform(DataConfig(shift=0.05)))
    aug._decoded = kept._decoded
    for _ in range(3):
        for i in range(len(aug)):
            item = aug[i]
            assert item["image"].shape == (1, 64, 320) and item["mask"].shape == (4, 64, 320)
    assert all(np.array_equal(im, b_im) and np.array_equal(m, b_m)
               for (im, m), (b_im, b_m) in zip((kept._read(i) for i in range(len(kept))), before))


def test_augmentation_repeats_with_the_seed_and_differs_per_worker(synth_small) -> None:
    """albumentations keeps its own random state: train.seed must reach it (a rerun sees the same
    augmented batches) and each DataLoader worker must get a stream of its own (with one shared
    stream, two workers would augment the same image identically)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from steelseg.data.augment import train_transform
    from steelseg.training.config import DataConfig
    from steelseg.training.loaders import seed_worker

    ds = open_dataset(synth_small)
    same = ds.subset([ds.image_ids[0]] * 8)  # one image 8 times: batch 0 goes to worker 0, batch 1 to worker 1

    def batches(seed: int, workers: int) -> list[np.ndarray]:
        L.seed_everything(seed, workers=True, verbose=False)
        samples = SegmentationSamples(same, train_transform(DataConfig(shift=0.05), seed=seed))
        loader = DataLoader(samples, batch_size=4, num_workers=workers, worker_init_fn=seed_worker)
        return [b["image"].numpy() for b in loader]

    for workers in (0, 2):
        a, b, c = batches(5, workers), batches(5, workers), batches(6, workers)
        assert all(np.array_equal(x, y) for x, y in zip(a, b)), workers  # the seed repeats the run
        assert not all(np.array_equal(x, y) for x, y in zip(a, c)), workers  # another seed, other batches
    first, second = batches(5, 2)
    assert not np.array_equal(first, second)  # the two workers' streams differ
