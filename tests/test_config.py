from __future__ import annotations

from pathlib import Path

import pytest

from steelseg.errors import ConfigError
from steelseg.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.task in ("segment", "classify")


def test_overrides_and_save(tmp_path) -> None:
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.epochs=5", "data.crop=[64, 128]", "model.encoder_weights=null",
                                              "train.lr=1e-2"])
    assert cfg.train.epochs == 5 and cfg.data.crop == [64, 128] and cfg.train.lr == 0.01
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], r"unknown key 'train.epoch'.*did you mean 'epochs'"),
        (["trian.epochs=3"], r"unknown key 'trian'"),
        (["train.epochs=many"], r"train.epochs: expected int, got str"),
        (["data.crop=5"], r"data.crop: expected a list"),
        (["model.arch=unet3d"], r"unknown architecture 'unet3d'.*Valid: .*deeplabv3plus"),
        (["model.encoder=resnet1800"], r"unknown smp encoder"),
        (["train.loss=hinge"], r"train.loss: 'hinge' is not one of bce, dice"),
        (["train.epochs"], r"expected section.key=value"),
    ],
)
def test_bad_configs(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "tiny.yaml", overrides)


def test_missing_and_invalid_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
