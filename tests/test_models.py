from __future__ import annotations

import pytest
import torch

from steelseg.errors import ConfigError
from steelseg.models import create_classifier, create_segmenter

TINY = "tu-test_resnet"
DEC = {"decoder_channels": [16, 16, 8, 8, 8]}


class TestSegmenters:
    """One tester for every architecture: tiny encoder, 64x64 input, odd sizes padded and cropped."""

    @pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus", "pspnet", "linknet"])
    def test_forward_shapes(self, arch: str) -> None:
        kw = DEC if arch in ("unet", "unetplusplus") else {}
        m = create_segmenter(arch, TINY, classes=4, in_channels=1, **kw).eval()
        with torch.no_grad():
            assert m(torch.zeros(2, 1, 64, 64)).shape == (2, 4, 64, 64)
            assert m(torch.zeros(1, 1, 50, 70)).shape == (1, 4, 50, 70)  # not a multiple of 32

    def test_three_channels_and_per_class(self) -> None:
        m = create_segmenter("unet", TINY, classes=3, in_channels=3, per_class=True, **DEC).eval()
        assert len(m.members) == 3
        with torch.no_grad():
            assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)

    def test_xception_encoder(self) -> None:
        m = create_segmenter("unet", "tu-xception41", classes=4, in_channels=1).eval()
        with torch.no_grad():
            assert m(torch.zeros(1, 1, 64, 96)).shape == (1, 4, 64, 96)


def test_classifier_binary_and_multilabel() -> None:
    for k in (1, 4):
        c = create_classifier("test_resnet", classes=k, in_channels=1).eval()
        with torch.no_grad():
            assert c(torch.zeros(2, 1, 64, 128)).shape == (2, k)


def test_unknown_names_list_choices() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'unte'.*Did you mean unet"):
        create_segmenter("unte", TINY, 2)
    with pytest.raises(ConfigError, match="unknown smp encoder 'resnet19'.*tu-xception41"):
        create_segmenter("unet", "resnet19", 2)
    with pytest.raises(ConfigError, match="unknown timm encoder"):
        create_segmenter("unet", "tu-not_a_model", 2)
    with pytest.raises(ConfigError, match="unknown timm classifier"):
        create_classifier("not_a_model", 2)
