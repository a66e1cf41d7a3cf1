"""A tiny random-init bundle exported to ONNX, for the image's smoke run where no real bundle is at hand (CI):
python deploy/image/smoke_bundle.py OUT  ->  OUT/onnx (an ONNX bundle the torch-free image can load)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from steelseg.inference import write_bundle
from steelseg.inference.export import export_bundle
from steelseg.models import create_segmenter, save_weights, write_model_json
from steelseg.schema import InputMeta, ModelMeta, ModelSpec


def main(out: Path) -> int:
    names = ["pits", "streaks", "scratches", "blotches"]
    kw = {"decoder_channels": [8, 8, 8, 8, 8]}
    torch.manual_seed(0)
    model = out / "model"
    model.mkdir(parents=True)
    save_weights(create_segmenter("unet", "tu-test_resnet", len(names), 1, **kw), model / "best.safetensors")
    write_model_json(model, ModelMeta(ModelSpec("segment", "tu-test_resnet", len(names), 1, "unet", kwargs=kw), names,
                                      InputMeta()))
    bundle = write_bundle(out / "torch", [model], kind="plain")
    rng = np.random.default_rng(0)
    export_bundle(bundle, out / "onnx", samples=[rng.integers(0, 255, (256, 1600), np.uint8)])
    print(out / "onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
