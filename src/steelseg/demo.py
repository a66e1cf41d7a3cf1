"""``make demo``: the main job end to end on synthetic Severstal-format data.

synth -> info -> eda -> folds -> train (tiny U-Net, CPU) -> tune (thresholds, minimum areas) ->
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
    _step("synth", str(data), "--images", "160", "--seed", "0")
    _step("synth", str(test), "--images", "24", "--seed", "1")
    _step("info", str(data))
    _step("eda", str(data), "--out", str(out / "eda"))
    _step("folds", str(data), "--k", "5", "--out", str(data / "folds.csv"))
    _step("train", str(CONFIG), "--data", str(data), "--name", "tiny-unet", "--out-dir", str(runs),
          "--epochs", "8", "--set", f"data.folds={data / 'folds.csv'}", "--set", "train.lr=0.01",
          "--set", "model.kwargs={decoder_channels: [64, 32, 16, 16, 16]}", "--set", "data.crop=[128, 512]")
    run_dir = runs / "tiny-unet"
    _step("tune", str(run_dir), "--data", str(data), "--out", str(out / "bundle"))
    _step("predict", str(out / "bundle"), str(test / "train_images"), "--out", str(out / "predict"),
          "--overlays", "--labels", str(test))
    _step("export", str(out / "bundle"), "--out", str(out / "bundle-int8"), "--quantize", "int8",
          "--data", str(data), "--max-dice-drop", "0.02")
    _step("predict", str(out / "bundle-int8"), str(test / "train_images"), "--out", str(out / "predict-int8"),
          "--labels", str(test))
    _step("bundle", "--empty", "--class-names", "pits,streaks,scratches,blotches", "--out", str(out / "empty"))
    _step("predict", str(out / "empty"), str(test / "train_images"), "--out", str(out / "predict-empty"),
          "--labels", str(test))
    ours = json.loads((out / "predict" / "predict.json").read_text())["dice"]
    empty = json.loads((out / "predict-empty" / "predict.json").read_text())["dice"]
    int8 = json.loads((out / "predict-int8" / "predict.json").read_text())["dice"]
    print(f"\nheld-out Kaggle Dice: tuned pipeline {ours:.4f} (ONNX int8: {int8:.4f}) vs all-empty baseline {empty:.4f}")
    print(f"report {out / 'eda' / 'index.html'}; submission {out / 'predict' / 'submission.csv'}; "
          f"overlays {out / 'predict' / 'overlays'}; MLflow: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db")


if __name__ == "__main__":
    run(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo"))
