"""The torch side of the data: :class:`SegmentationSamples`, a map-style dataset of NumPy arrays that a
torch ``DataLoader`` batches (no torch import here: the loader collates the arrays)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from steelseg.data.images import normalize
from steelseg.data.table import DefectDataset, progress_bar
from steelseg.schema import InputSpec

__all__ = ["SegmentationSamples"]


class SegmentationSamples:
    """Map-style dataset for a torch DataLoader: dicts of image, mask and labels as arrays.

    ``transform`` is an albumentations-style callable ``(image=..., mask=...) -> dict``. Images
    come out as float32 (C, H, W) through :func:`steelseg.data.images.normalize`, masks as
    float32 (K, H, W) and ``labels`` as float32 (K,) class presence.
    """

    def __init__(self, dataset: DefectDataset, transform: Callable[..., dict] | None = None,
                 channels: int = 1, mean: Sequence[float] = (0.449,), std: Sequence[float] = (0.226,),
                 with_masks: bool = True) -> None:
        self.dataset = dataset
        self.ids = dataset.image_ids
        self.transform = transform
        self.spec = InputSpec(channels, tuple(mean), tuple(std))
        self.with_masks = with_masks
        self._decoded: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # preload()

    def __len__(self) -> int:
        return len(self.ids)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The decoded uint8 image and mask of item ``i``, from the files or the preload()ed copy."""
        if self._decoded is not None:
            return self._decoded[i]
        image_id = self.ids[i]
        image = self.dataset.load_image(image_id, self.spec.channels)
        return image, self.dataset.load_mask(image_id) if self.with_masks else None

    def decoded_bytes(self) -> int:
        """Memory that :meth:`preload` needs: the first item's decoded bytes per pixel times all pixels."""
        if not self.ids:
            return 0
        image, mask = self._read(0)
        per_pixel = (image.nbytes + (0 if mask is None else mask.nbytes)) / (image.shape[0] * image.shape[1])
        pixels = (self.dataset.table["height"].astype(np.int64) * self.dataset.table["width"]).sum()
        return int(per_pixel * pixels)

    def preload(self, desc: str = "decoding", progress: bool = False) -> None:
        """Decode every image and mask once and keep them in memory (``data.cache``): later epochs
        skip the file reads and decoding. The arrays are made read-only, so a transform that wrote
        into its input would fail loudly instead of changing the kept copy. DataLoader workers
        started after this share the copy (fork, copy-on-write)."""
        items = []
        for i in progress_bar(range(len(self.ids)), len(self.ids), desc, progress):
            image, mask = self._read(i)
            image.setflags(write=False)
            if mask is not None:
                mask.setflags(write=False)
            items.append((image, mask))
        self._decoded = items

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.ids[i]
        image, mask = self._read(i)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask", mask)
        x = normalize(image, self.spec)  # the same function Predictor and export use
        item: dict[str, Any] = {"image": np.ascontiguousarray(x, np.float32), "image_id": image_id}
        if mask is not None:
            m = np.ascontiguousarray(mask.transpose(2, 0, 1), np.float32)
            item["mask"] = m
            item["labels"] = (m.reshape(m.shape[0], -1).max(axis=1) > 0).astype(np.float32)
        return item
