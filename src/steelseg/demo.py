"""``make demo``: the main job end to end on synthetic Severstal-format data.

synth -> info -> eda -> folds -> train (tiny U-Net, CPU) -> train a gating classifier -> tune
(thresholds, minimum areas, gates) -> run report ->
predict a fresh test folder to submission.csv with overlays -> export to ONNX int8 and predict
again -> compare with the all-empty baseline. The demo folder is made anew on every run.

python -m steelseg.demo [OUT]   (default runs/demo)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from steelseg.cli import main as cli

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _step(*args: str) -> None:
    print(f"\n$ steelseg {' '.join(args)}", flush=True)
    rc = cli(list(args))
    if rc:
        raise SystemExit(rc)


def _sizes() -> dict[str, list[str]]:
    """The demo's data and training sizes; STEELSEG_DEMO_SMALL=1 (the tests) shrinks them, same steps."""
    import os

    if os.environ.get("STEELSEG_DEMO_SMALL") == "1":
        img = ["--height", "64", "--width", "320"]
        return {"train_images": ["--images", "40", *img], "test_images": ["--images", "8", *img],
                "seg_epochs": ["--epochs", "2"], "cls_epochs": ["--epochs", "2"], "crop": ["--set", "data.crop=null"],
                "int8_drop": ["--max-dice-drop", "1"]}  # a 2-epoch model's Dice on 8 images says little
    return {"train_images": ["--images", "160"], "test_images": ["--images", "24"], "seg_epochs": ["--epochs", "8"],
            "cls_epochs": ["--epochs", "6"], "crop": ["--set", "data.crop=[128, 512]"],
            "int8_drop": ["--max-dice-drop", "0.02"]}


def run(out: Path) -> None:
    import shutil

    marker = out / ".steelseg-demo"
    if marker.is_file():  # a folder an earlier demo made, and nothing else, is made anew
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and was not made by the demo; give another folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by python -m steelseg.demo; removed and made anew on the next run\n")
    data, test, runs = out / "data", out / "test", out / "runs"
    size = _sizes()
    _step("synth", str(data), *size["train_images"], "--seed", "0")
    _step("synth", str(test), *size["test_images"], "--seed", "1")
    _step("info", str(data))
    _step("eda", str(data), "--out", str(out / "eda"))
    _step("folds", str(data), "--k", "5", "--out", str(data / "folds.csv"))
    _step("train", str(CONFIG), "--data", str(data), "--name", "tiny-unet", "--out-dir", str(runs),
          *size["seg_epochs"], "--set", f"data.folds={data / 'folds.csv'}", "--set", "train.lr=0.01",
          "--set", "model.kwargs={decoder_channels: [64, 32, 16, 16, 16]}", *size["crop"],
          # keep the epoch that segments best: an empty-predicting model wins Kaggle Dice on strips that
          # are half defect-free, but scores 0 mIoU; tuning then turns the kept model into Dice
          "--set", "train.monitor=val/miou")
    run_dir = runs / "tiny-unet"
    # the winning solutions' first stage: a classifier that gates the segmenter (skips defect-free strips)
    _step("train", str(CONFIG), "--data", str(data), "--name", "tiny-gate", "--out-dir", str(runs),
          *size["cls_epochs"], "--set", f"data.folds={data / 'folds.csv'}", "--set", "model.task=classify",
          "--set", "model.encoder=test_resnet", "--set", "model.kwargs={}", "--set", "train.loss=bce",
          "--set", "train.lr=0.003", *size["crop"])
    _step("tune", str(run_dir), "--classifier", str(runs / "tiny-gate"), "--data", str(data),
          "--out", str(out / "bundle"))
    _step("report", str(run_dir), "--out", str(out / "report"))
    _step("predict", str(out / "bundle"), str(test / "train_images"), "--out", str(out / "predict"),
          "--overlays", "--labels", str(test))
    _step("export", str(out / "bundle"), "--out", str(out / "bundle-int8"), "--quantize", "int8",
          "--data", str(data), *size["int8_drop"])
    _step("predict", str(out / "bundle-int8"), str(test / "train_images"), "--out", str(out / "predict-int8"),
          "--labels", str(test))
    _step("bundle", "--empty", "--class-names", "pits,streaks,scratches,blotches", "--out", str(out / "empty"))
    _step("predict", str(out / "empty"), str(test / "train_images"), "--out", str(out / "predict-empty"),
          "--labels", str(test))
    ours = json.loads((out / "predict" / "predict.json").read_text())["dice"]
    empty = json.loads((out / "predict-empty" / "predict.json").read_text())["dice"]
    int8 = json.loads((out / "predict-int8" / "predict.json").read_text())["dice"]
    print(f"\nheld-out Kaggle Dice: tuned pipeline {ours:.4f} (ONNX int8: {int8:.4f}) vs all-empty baseline {empty:.4f}")
    print("\nwhere everything is:")
    for what, path in (("dataset report (EDA)", out / "eda" / "index.html"),
                       ("segmenter run", run_dir), ("gating classifier run", runs / "tiny-gate"),
                       ("run report", out / "report" / "index.html"),
                       ("tuned bundle (PyTorch)", out / "bundle"), ("ONNX int8 bundle", out / "bundle-int8"),
                       ("submission", out / "predict" / "submission.csv"), ("overlays", out / "predict" / "overlays"),
                       ("tracking", "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db"),
                       ("all runs", f"steelseg runs {runs}")):
        print(f"  {what:<24}{path}")


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
