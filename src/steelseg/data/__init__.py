"""The data wing: images and RLE, the sample table, one module per on-disk layout behind one registry,
conversion, folds, synthetic data and the samples a DataLoader batches.

    from steelseg.data import open_dataset
    ds = open_dataset("data/severstal")          # any layout, detected from the files
    mask = ds.load_mask(ds.image_ids[0])         # (H, W, C) uint8
"""

from steelseg.lazy import lazy_exports

_EXPORTS = {
    "DefectDataset": "steelseg.data.table", "one_hot": "steelseg.data.table", "read_image_ids": "steelseg.data.table",
    "LAYOUTS": "steelseg.data.open", "open_dataset": "steelseg.data.open",
    "convert": "steelseg.data.convert", "convert_to_kaggle": "steelseg.data.convert",
    "write_kaggle_csv": "steelseg.data.kaggle", "SegmentationSamples": "steelseg.data.samples",
    "make_folds": "steelseg.data.folds", "read_folds": "steelseg.data.folds", "write_folds": "steelseg.data.folds",
    "SynthConfig": "steelseg.data.synth", "make_dataset": "steelseg.data.synth",
    "read_image": "steelseg.data.images",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
