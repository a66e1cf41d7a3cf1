"""Training: every architecture and both tasks run, runs reload, resume, track, DDP, and learn."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from steelseg.errors import ConfigError
from steelseg.models.checkpoint import load_model, read_model_json
from steelseg.training.config import load_config
from steelseg.training.run import fit

ROOT = Path(__file__).resolve().parents[1]
TINY_DEC = "model.kwargs={decoder_channels: [16, 16, 8, 8, 8]}"


def tiny_cfg(data: Path, out: Path, *extra: str):
    base = [f"data.path={data}", f"out_dir={out}", "data.num_workers=0", "data.batch_size=8",
            "data.crop=null", "train.epochs=1", "track.mlflow=false", "model.encoder=tu-test_resnet"]
    return load_config(ROOT / "configs" / "tiny.yaml", base + list(extra))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus", "pspnet"])
def test_each_architecture_one_epoch(arch, synth_small, tmp_path) -> None:
    extra = [f"model.arch={arch}", "train.limit_train_batches=2", "train.limit_val_batches=2"]
    extra.append(TINY_DEC if arch in ("unet", "unetplusplus") else "model.kwargs={}")
    result = fit(tiny_cfg(synth_small, tmp_path, *extra))
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "split.json").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = read_metrics(run)
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val/dice"]) <= 1.0
    model, meta = load_model(run / "model")
    assert meta.model.arch == arch and meta.class_names == ["pits", "streaks", "scratches", "blotches"]
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 320)).shape == (1, 4, 64, 320)


def test_per_class_segmenter(synth_small, tmp_path) -> None:
    result = fit(tiny_cfg(synth_small, tmp_path, "model.per_class=true", TINY_DEC, "train.limit_train_batches=2"))
    model, meta = load_model(result.run_dir / "model")
    assert meta.model.per_class and len(model.members) == 4


@pytest.mark.parametrize("loss", ["bce", "focal"])
def test_classifier_multilabel(loss, synth_small, tmp_path) -> None:
    result = fit(tiny_cfg(synth_small, tmp_path, "model.task=classify", "model.encoder=test_resnet", "model.kwargs={}",
                          f"train.loss={loss}", "data.balanced_sampling=true"))
    rows = read_metrics(result.run_dir)
    assert "val/f1" in rows[0] and "val/f1_scratches" in rows[0]
    model, meta = load_model(result.run_dir / "model")
    assert meta.model.task == "classify"
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 320)).shape == (2, 4)


def test_rgb_input_end_to_end(synth_small, tmp_path) -> None:
    from steelseg.inference.predictor import Predictor

    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "data.channels=3", "data.mean=[0.485, 0.456, 0.406]",
                          "data.std=[0.229, 0.224, 0.225]", "train.limit_train_batches=2"))
    _, meta = load_model(result.run_dir / "model")
    assert meta.input.channels == 3 and meta.model.in_channels == 3
    pred = Predictor.from_models([result.run_dir]).predict([np.zeros((64, 320), np.uint8)])[0]
    assert pred.probs.shape == (64, 320, 4)


def test_binary_defect_classifier(synth_small, tmp_path) -> None:
    result = fit(tiny_cfg(synth_small, tmp_path, "model.task=classify", "model.encoder=test_resnet", "model.kwargs={}",
                          "train.loss=bce", "model.binary=true"))
    assert "val/auc_defect" in read_metrics(result.run_dir)[0] or "val/f1_defect" in read_metrics(result.run_dir)[0]
    model, meta = load_model(result.run_dir / "model")
    assert meta.model.outputs == 1 and meta.model.binary
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 64, 320)).shape == (2, 1)


def test_wandb_offline(synth_small, tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="wandb is the optional [wandb] extra")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "track.wandb=true", "train.limit_train_batches=2"))
    ids = json.loads((result.run_dir / "tracking.json").read_text())
    assert ids.get("wandb_run_id")
    offline = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert offline and any(p.suffix == ".wandb" for p in offline[0].iterdir())


@pytest.mark.parametrize("loss", ["dice", "focal", "lovasz"])
def test_losses_and_onecycle(loss, synth_small, tmp_path) -> None:
    result = fit(tiny_cfg(synth_small, tmp_path, f"train.loss={loss}", TINY_DEC, "train.scheduler=onecycle",
                          "train.limit_train_batches=2", "train.limit_val_batches=1",
                          "train.pos_weight=[2.0, 2.0, 1.0, 1.0]", "data.crop=[32, 128]"))
    assert np.isfinite(float(read_metrics(result.run_dir)[0]["train/loss_epoch"]))


def test_per_class_lovasz_is_the_mean_of_each_class() -> None:
    """bce_lovasz / lovasz: one Lovasz hinge per class, averaged (not one over all classes)."""
    import segmentation_models_pytorch as smp

    from steelseg.models.losses import build_loss

    target = torch.zeros(2, 2, 16, 16)
    target[:, 0, :, :8] = 1  # class 0: half of every image
    target[:, 1, 4:6, 4:6] = 1  # class 1: 4 pixels
    logits = torch.where(target > 0, 5.0, -5.0)  # right everywhere ...
    logits[:, 1] = 5.0  # ... except class 1, marked everywhere
    logits.requires_grad_(True)
    loss = build_loss("lovasz", "segment", 2)(logits, target)
    binary = smp.losses.LovaszLoss(mode="binary", per_image=False)
    per_class = [float(binary(logits.detach()[:, c:c + 1], target[:, c:c + 1])) for c in range(2)]
    assert per_class[0] < 1e-6 < per_class[1]
    assert float(loss) == pytest.approx(sum(per_class) / 2, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad[:, 1].abs().sum()) > 0
    both = build_loss("bce_lovasz", "segment", 2)(logits.detach(), target)
    assert float(both) == pytest.approx(float(loss) + float(F.binary_cross_entropy_with_logits(logits, target)),
                                        rel=1e-5)


def test_finetune_loss_takes_over_for_the_last_share(synth_small, tmp_path) -> None:
    """train.finetune_loss: the first half of a 2-epoch run on train.loss, the second on Lovasz."""
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.epochs=2", "train.limit_train_batches=4",
                          "train.limit_val_batches=1", "train.finetune_loss=lovasz", "train.finetune_share=0.5"))
    rows = read_metrics(result.run_dir)
    assert [float(r["train/finetune"]) for r in rows] == [0.0, 1.0]
    from steelseg.reports.report import write_report  # its loss plot shades the fine-tune epochs

    report = write_report(result.run_dir, tmp_path / "report")
    assert report["best_epoch_metrics"]["train/finetune"] in (0.0, 1.0)
    assert (tmp_path / "report" / "img" / "loss.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="finetune_loss.*or null"):
        tiny_cfg(synth_small, tmp_path, "train.finetune_loss=iou")
    with pytest.raises(ConfigError, match="finetune_share"):
        tiny_cfg(synth_small, tmp_path, "train.finetune_loss=lovasz", "train.finetune_share=1.0")


def test_low_res_scale_trains_small_first_and_saves_the_final_scale(synth_small, tmp_path, monkeypatch) -> None:
    """train.low_res_scale: the first low_res_share of the run at that scale, the rest (and the best
    model) at model.kwargs.input_scale, which model.json records."""
    from types import SimpleNamespace

    from steelseg.models import Segmenter
    from steelseg.training.callbacks import RunRecorder
    from steelseg.training.module import SteelsegModule

    seen: list[tuple[int, int]] = []  # what the network got in each training step (grad on; val runs without)
    plain = Segmenter.members_heads  # the members' call inside forward, after the resize

    def spy(self, x):
        if torch.is_grad_enabled():
            seen.append(tuple(x.shape[-2:]))
        return plain(self, x)

    monkeypatch.setattr(Segmenter, "members_heads", spy)
    dec = "model.kwargs={decoder_channels: [16, 16, 8, 8, 8], input_scale: 1.0}"
    cfg = tiny_cfg(synth_small, tmp_path, dec, "train.epochs=3", "train.limit_train_batches=2",
                   "train.limit_val_batches=1", "train.low_res_scale=0.5", "train.low_res_share=0.6")
    result = fit(cfg)
    # 6 steps: progress 0, 1/6, 2/6, 3/6 < 0.6 at half scale (64x320 -> 32x160), 4/6 and 5/6 at full scale
    assert seen == [(32, 160)] * 4 + [(64, 320)] * 2
    rows = read_metrics(result.run_dir)
    assert [float(r["train/input_scale"]) for r in rows] == [0.5, 0.5, 1.0]
    meta = read_model_json(result.run_dir / "model")
    assert meta.best["epoch"] == 2  # the low-resolution epochs' scores are logged, never the best model
    assert meta.model.kwargs["input_scale"] == 1.0
    from steelseg.reports.report import write_report  # its score plot shades the low-resolution epochs

    write_report(result.run_dir, tmp_path / "report")
    assert (tmp_path / "report" / "img" / "scores.png").stat().st_size > 0
    # A run that ends inside the low-resolution phase records the scale its weights were trained at.
    module = SteelsegModule(cfg, ["pits", "streaks", "scratches", "blotches"])
    module.model.input_scale = 0.5
    recorder = RunRecorder(tmp_path / "ended-early", read_model_json(result.run_dir / "model"), "val/dice", "max")
    (tmp_path / "ended-early" / "model").mkdir(parents=True)
    recorder.on_train_end(SimpleNamespace(is_global_zero=True, callbacks=[], current_epoch=0), module)
    assert read_model_json(tmp_path / "ended-early" / "model").model.kwargs["input_scale"] == 0.5
    for bad, match in (("train.low_res_scale=0.1", "low_res_scale: 0.1"), ("train.low_res_share=1", "low_res_share"),
                       ("train.early_stopping=2", "early_stopping")):
        with pytest.raises(ConfigError, match=match):
            tiny_cfg(synth_small, tmp_path, "train.low_res_scale=0.5", bad)
    with pytest.raises(ConfigError, match="segmenters"):
        tiny_cfg(synth_small, tmp_path, "model.task=classify", "model.kwargs={}", "train.low_res_scale=0.5")


def test_rebuilt_model_matches_trained(synth_small, tmp_path) -> None:
    from steelseg.training.module import SteelsegModule

    cfg = tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.limit_train_batches=3")
    result = fit(cfg)
    run = result.run_dir
    # The resume checkpoint holds the trained weights: compare against the safetensors rebuild.
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    module = SteelsegModule(cfg, read_model_json(run / "model").class_names)
    module.load_state_dict(state)
    module.eval()
    rebuilt, _ = load_model(run / "model", which="last")
    x = torch.randn(2, 1, 64, 320)
    with torch.no_grad():
        torch.testing.assert_close(module(x), rebuilt(x))


def test_freeze_stride_keeps_the_early_encoder_layers_as_loaded(synth_small, tmp_path) -> None:
    """train.freeze_stride: the layers up to 1/4 resolution keep the loaded weights, the rest trains."""
    from safetensors.torch import load_file, save_file

    from steelseg.models import create_segmenter, freeze_to_stride

    start = create_segmenter("unet", "tu-test_resnet", 4, 1, None, decoder_channels=[16, 16, 8, 8, 8])
    weights = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in start.members[0].encoder.model.state_dict().items()}, str(weights))
    n = freeze_to_stride(start, 4)
    frozen = {k.removeprefix("members.0.encoder.model.") for k, p in start.named_parameters() if not p.requires_grad}
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.limit_train_batches=4", "train.lr=0.01",
                          f"model.encoder_weights={weights}", "train.freeze_stride=4"))
    model, _ = load_model(result.run_dir / "model", which="last")
    loaded = load_file(str(weights))
    trained = {k: v for k, v in model.members[0].encoder.model.named_parameters()}
    assert len(frozen) == n > 0
    for k, v in trained.items():
        same = torch.equal(v, loaded[k])
        assert same == (k in frozen), k  # frozen: exactly as loaded; every other tensor moved
    with pytest.raises(ConfigError, match="train.freeze_stride: 3"):
        tiny_cfg(synth_small, tmp_path, "train.freeze_stride=3")


def test_mlflow_records_params_and_metrics(synth_small, tmp_path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "track.mlflow=true", f"track.tracking_uri={uri}",
                          "train.limit_train_batches=2", "train.epochs=2"))
    run_id = json.loads((result.run_dir / "tracking.json").read_text())["mlflow_run_id"]
    run = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.arch"] == "unet"
    assert "val/dice" in run.data.metrics and "train/loss_epoch" in run.data.metrics
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(run_id, "val/dice")
    assert len(history) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_server_uri(synth_small, tmp_path) -> None:
    """A run logged to an MLflow tracking server (started here, loopback only)."""
    import urllib.request

    import mlflow

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "track.mlflow=true", f"track.tracking_uri={uri}",
                              "train.limit_train_batches=2"))
        run_id = json.loads((result.run_dir / "tracking.json").read_text())["mlflow_run_id"]
        client = mlflow.tracking.MlflowClient(uri)
        run = client.get_run(run_id)
        assert "val/dice" in run.data.metrics and run.data.params["model.arch"] == "unet"
        assert any(a.path == "model" for a in client.list_artifacts(run_id))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("STEELSEG_RUN_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "steelseg.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_kill_and_resume(synth_small, tmp_path) -> None:
    run = tmp_path / "runs" / "killed"
    args = ["train", str(ROOT / "configs" / "tiny.yaml"), "--data", str(synth_small), "--name", "killed",
            "--out-dir", str(tmp_path / "runs"), "--epochs", "6", "--set", "data.crop=null",
            "--set", "data.num_workers=0", "--set", "data.batch_size=4", "--set", "track.mlflow=false",
            "--set", "train.checkpoint_every=3"]
    proc = _cli(*args)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and (run / "metrics.csv").is_file():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed:\n" + proc.stdout.read()
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # kill -9: no clean-up runs
    proc.wait()
    done_before = len(read_metrics(run))
    assert done_before < 6
    out, _ = _cli("train", "--resume", str(run)).communicate(timeout=300)
    assert "run folder" in out, out
    epochs = [int(r["epoch"]) for r in read_metrics(run)]
    assert epochs == list(range(6)), epochs
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == int(read_metrics(run)[-1]["step"])  # resumed, not restarted
    assert state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 6  # written at epoch 6's end
    _, meta = load_model(run / "model", which="last")
    assert meta.epochs_trained == 6
    # the best epoch's record survives kill -9 + resume (it travels in the resume checkpoint)
    rows = read_metrics(run)
    best = max(rows, key=lambda r: float(r["val/dice"]))
    assert meta.best is not None and meta.best["epoch"] == int(best["epoch"])
    assert abs(meta.best["value"] - float(best["val/dice"])) < 1e-5 and "val/dice" in meta.best["metrics"]


def test_ddp_two_processes_on_cpu(synth_small, tmp_path) -> None:
    args = ["train", str(ROOT / "configs" / "tiny.yaml"), "--data", str(synth_small), "--name", "ddp",
            "--out-dir", str(tmp_path / "runs"), "--epochs", "1", "--accelerator", "cpu", "--devices", "2",
            "--strategy", "ddp", "--set", "data.crop=null", "--set", "data.num_workers=0",
            "--set", "track.mlflow=false", "--set", "train.limit_train_batches=2", "--set", "train.early_stopping=2"]
    out, _ = _cli(*args).communicate(timeout=300)
    assert "run folder" in out, out
    runs = list((tmp_path / "runs").iterdir())
    device = json.loads((runs[0] / "model" / "model.json").read_text())["trained_on"]["device"]
    assert device.startswith("2 x CPU"), device  # two processes trained it (Lightning's banner goes to log.txt)
    assert [r.name for r in runs] == ["ddp"]
    assert len(read_metrics(runs[0])) == 1
    load_model(runs[0] / "model")


def test_bad_config_fails_before_training(synth_small, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown architecture"):
        tiny_cfg(synth_small, tmp_path, "model.arch=segnet")
    proc = _cli("train", str(ROOT / "configs" / "tiny.yaml"), "--set", "train.epochs=ten")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "train.epochs: expected int" in out and "Traceback" not in out
    assert not (Path.cwd() / "runs" / "ten").exists()


def test_runs_table_and_compare(synth_small, tmp_path, capsys) -> None:
    from steelseg.cli import main

    out = tmp_path / "runs"
    for name, lr in (("a", "0.01"), ("b", "0.003")):
        fit(tiny_cfg(synth_small, out, TINY_DEC, "train.epochs=2", "train.limit_train_batches=2",
                     f"train.lr={lr}", f"name={name}"))
    capsys.readouterr()
    assert main(["runs", str(out), "--sort", "dice", "--md", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv"),
                 "--all"]) == 0
    text = capsys.readouterr().out
    assert "dice_pits" in text and text.count("unet") == 2
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:  # the table's numbers are the run's metrics.csv
        metrics = read_metrics(out / row["name"])
        best = max(metrics, key=lambda r: float(r["val/dice"]))
        assert abs(float(row["dice"]) - float(best["val/dice"])) < 1e-9
        assert int(row["epochs"]) == 2 and int(row["best_epoch"]) == int(best["epoch"]) + 1
        # where it trained, from model.json: img/s means little without it
        meta = json.loads((out / row["name"] / "model" / "model.json").read_text())
        assert row["device"] == meta["trained_on"]["device"]
        assert row["device"].startswith("CPU ") and f"({torch.get_num_threads()} threads)" in row["device"]
    assert float(rows[0]["dice"]) >= float(rows[1]["dice"])
    assert (tmp_path / "t.md").read_text().startswith("| name |")
    assert main(["runs", str(out), "--where", "name=b"]) == 0
    assert capsys.readouterr().out.count("\nb ") == 1
    assert main(["runs", "--compare", str(out / "a"), str(out / "b")]) == 0
    cmp = capsys.readouterr().out
    assert "train.lr" in cmp and "0.01" in cmp and "0.003" in cmp and "data.path" not in cmp


def test_lr_factor_shapes() -> None:
    from steelseg.training.module import lr_factor

    assert lr_factor("cosine", 0, 0.0, warmup=10) == pytest.approx(0.1)
    assert lr_factor("cosine", 50, 0.0, warmup=10) == pytest.approx(1.0)
    assert lr_factor("cosine", 50, 0.5) == pytest.approx(0.505)
    assert lr_factor("cosine", 99, 1.0) == pytest.approx(0.01) == lr_factor("cosine", 99, 7.0)
    assert lr_factor("onecycle", 0, 0.0) == pytest.approx(1 / 25)
    assert lr_factor("onecycle", 30, 0.3) == pytest.approx(1.0)
    assert lr_factor("onecycle", 99, 1.0) == pytest.approx(1 / 25e4)


def test_time_budget_ends_the_schedule(synth_small, tmp_path) -> None:
    # 1000 epochs asked, 0.1 minute given: the run stops on time with the learning rate annealed.
    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.epochs=1000", "train.max_minutes=0.1",
                          "train.lr=0.01", "train.limit_val_batches=1"))
    rows = read_metrics(result.run_dir)
    assert 1 <= len(rows) < 1000
    assert float(rows[-1]["lr"]) <= 0.01 * 0.011  # the floor of the cosine: 1% of train.lr
    assert (result.run_dir / "model" / "best.safetensors").is_file()


def test_data_cache_trains_as_the_files_do_and_refuses_what_does_not_fit(synth_small, tmp_path, monkeypatch,
                                                                         capsys) -> None:
    """data.cache changes where the pixels come from, not what is learnt: the same seed gives the same
    validation scores with and without it. A cache that would take over half the free memory is a
    ConfigError that says how much, before any training."""
    import steelseg.training.loaders as loaders_mod

    extra = [TINY_DEC, "train.limit_train_batches=3", "train.seed=5"]
    plain = read_metrics(fit(tiny_cfg(synth_small, tmp_path / "plain", *extra)).run_dir)
    cached = read_metrics(fit(tiny_cfg(synth_small, tmp_path / "cached", *extra, "data.cache=true")).run_dir)
    assert "data.cache: 48 images and masks decoded into memory" in capsys.readouterr().err
    for key in ("train/loss", "val/loss", "val/dice"):
        assert float(plain[0][key]) == pytest.approx(float(cached[0][key]), abs=1e-5), key
    monkeypatch.setattr(loaders_mod, "available_memory", lambda: 2 ** 20)  # 1 MiB free
    with pytest.raises(ConfigError, match=r"data.cache: .* need about .* GiB, more than half of the 0.0 GiB"):
        fit(tiny_cfg(synth_small, tmp_path / "big", *extra, "data.cache=true"))
    assert not (tmp_path / "big").exists() or not any((tmp_path / "big").rglob("metrics.csv"))


def test_weight_average_is_what_gets_validated_and_saved(synth_small, tmp_path) -> None:
    from safetensors.torch import load_file

    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.ema=0.9", "train.epochs=2",
                          "train.limit_train_batches=3", "train.limit_val_batches=1", "train.lr=0.01"))
    model_dir = result.run_dir / "model"
    last = load_file(model_dir / "last.safetensors")
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    averaged = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()}
    current = {k[len("model."):]: v for k, v in ckpt["current_model_state"].items()}
    key = next(k for k in last if k.endswith("weight") and last[k].ndim == 4)
    assert torch.equal(last[key], averaged[key])
    assert not torch.equal(last[key], current[key])  # the raw weights moved on; the saved ones are the average
    with pytest.raises(ConfigError, match="train.ema"):
        tiny_cfg(synth_small, tmp_path, "train.ema=1.0")


def test_resume_state_is_written_at_each_epoch_end(synth_small, tmp_path) -> None:
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Probe(Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            ckpt = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            if trainer.current_epoch:
                seen.append(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])

    fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.epochs=3", "train.checkpoint_every=0",
                 "train.limit_train_batches=2", "train.limit_val_batches=1"), callbacks=[Probe()])
    assert seen == [2, 4]


def test_ema_update_warms_up_its_decay() -> None:
    from steelseg.training.callbacks import _ema_update

    avg, cur = [torch.zeros(3)], [torch.ones(3)]
    _ema_update(avg, cur, 0, decay=0.998)  # first update: decay 1/10 -> 90% of the new weights
    assert torch.allclose(avg[0], torch.full((3,), 0.9))
    avg = [torch.zeros(3)]
    _ema_update(avg, cur, 10**6, decay=0.998)  # warmed up: the configured decay
    assert torch.allclose(avg[0], torch.full((3,), 0.002))
    count = [torch.tensor(5)]
    _ema_update(count, [torch.tensor(9)], 3, decay=0.998)
    assert int(count[0]) == 9


def test_a_composite_monitor_keeps_the_epoch_the_runs_table_shows(synth_small, tmp_path) -> None:
    """train.monitor "val/ap,val/dice": the best epoch is the one of the highest AP, ties broken by Dice;
    model.json, `steelseg runs` and metrics.csv agree on it."""
    from steelseg.metrics import monitor_key
    from steelseg.reports.runs import run_row

    result = fit(tiny_cfg(synth_small, tmp_path, TINY_DEC, "train.epochs=3", "train.limit_train_batches=2",
                          "train.monitor=val/ap,val/dice"))
    rows = read_metrics(result.run_dir)
    want = max(range(len(rows)), key=lambda i: monitor_key(rows[i], "val/ap,val/dice"))
    meta = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert meta["best"]["epoch"] == int(rows[want]["epoch"]) == result.best_epoch
    assert meta["best"]["monitor"] == "val/ap,val/dice" and result.best == pytest.approx(float(rows[want]["val/ap"]))
    assert run_row(result.run_dir)["best_epoch"] == int(rows[want]["epoch"]) + 1
