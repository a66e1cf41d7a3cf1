from __future__ import annotations

import copy

import pytest
import torch

from steelseg.errors import ConfigError
from steelseg.models import create_classifier, create_segmenter, depthwise_in_fp32, freeze_to_stride

TINY = "tu-test_resnet"
DEC = {"decoder_channels": [16, 16, 8, 8, 8]}


class TestSegmenters:
    """One tester for every architecture: tiny encoder, 64x64 input, odd sizes padded and cropped."""

    @pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus", "pspnet", "linknet", "tiramisu"])
    def test_forward_shapes(self, arch: str) -> None:
        kw = DEC if arch in ("unet", "unetplusplus") else {}
        if arch == "tiramisu":
            pytest.importorskip("tiramisu_brulee")
            kw = {"down_blocks": [2, 2], "up_blocks": [2, 2], "bottleneck_layers": 2, "growth_rate": 4,
                  "first_conv_out_channels": 8}
        m = create_segmenter(arch, "none" if arch == "tiramisu" else TINY, classes=4, in_channels=1, **kw).eval()
        with torch.no_grad():
            assert m(torch.zeros(2, 1, 64, 64)).shape == (2, 4, 64, 64)
            assert m(torch.zeros(1, 1, 50, 70)).shape == (1, 4, 50, 70)  # not a multiple of 32

    def test_input_scale_resizes_inside_the_model(self) -> None:
        m = create_segmenter("unet", TINY, classes=2, in_channels=1, input_scale=1.28, **DEC).eval()
        plain = create_segmenter("unet", TINY, classes=2, in_channels=1, **DEC).eval()
        plain.load_state_dict(m.state_dict())  # the scale holds no weights
        x = torch.rand(1, 1, 50, 70)
        with torch.no_grad():
            out = m(x)
            assert out.shape == (1, 2, 50, 70)  # logits at the caller's size
            up = torch.nn.functional.interpolate(x, scale_factor=1.28, mode="bilinear")  # 64x89 inside
            ref = torch.nn.functional.interpolate(plain(up), size=(50, 70), mode="bilinear")
            torch.testing.assert_close(out, ref)
            assert not torch.allclose(out, plain(x), atol=1e-3)  # the scale changed what the net saw
        with pytest.raises(ConfigError, match="input_scale"):
            create_segmenter("unet", TINY, classes=2, input_scale=10.0)

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


def test_depthwise_in_fp32_only_changes_the_compute_dtype_under_cpu_autocast() -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 5, padding=2, groups=8),
                            torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.nn.Conv2d(8, 2, 1))
    ref = copy.deepcopy(m)
    x = torch.randn(2, 1, 16, 16)
    keys = list(m.state_dict())
    assert depthwise_in_fp32(m) == 1  # only the depthwise layer (groups == in_channels), not grouped convs
    assert depthwise_in_fp32(m) == 0  # already switched
    assert list(m.state_dict()) == keys and type(m[1]).__name__ == "Conv2dFp32"
    assert isinstance(copy.deepcopy(m)[1], type(m[1]))  # the EMA copy keeps it
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))  # without autocast: the same module
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m[1](torch.randn(2, 8, 16, 16).bfloat16()).dtype == torch.float32
            assert ref[1](torch.randn(2, 8, 16, 16).bfloat16()).dtype == torch.bfloat16
            assert m[:2](x).dtype == torch.float32 and m(x).dtype == torch.bfloat16  # the next layer is bf16 again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x).float().sum().backward()
    assert m[1].weight.grad is not None and m[1].weight.grad.dtype == torch.float32
    assert torch.isfinite(m[1].weight.grad).all() and m[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_freeze_to_stride_freezes_the_layers_before_the_first_coarser_one(stride: int) -> None:
    torch.manual_seed(0)
    m = create_segmenter("unet", TINY, classes=2, in_channels=1, **DEC)
    n = freeze_to_stride(m, stride)
    frozen = [k for k, p in m.named_parameters() if not p.requires_grad]
    assert n == len(frozen) > 0 and all(k.startswith("members.0.encoder.") for k in frozen)
    # Every frozen layer works at 1/stride or finer; the first trainable encoder layer that runs is coarser.
    seen: list[tuple[str, bool, int, int]] = []
    owners = {mod: name for name, mod in m.named_modules() if any(True for _ in mod.parameters(recurse=False))}

    def hook(mod, args, out) -> None:
        if out.dim() == 4 and out.shape[-1] > 1:
            seen.append((owners[mod], next(mod.parameters()).requires_grad, args[0].shape[-2], out.shape[-2]))

    handles = [mod.register_forward_hook(hook) for mod in owners]
    x = torch.rand(2, 1, 128, 128)
    m(x).sum().backward()
    for h in handles:
        h.remove()
    first_trainable = next(i for i, s in enumerate(seen) if s[1])
    assert all(not s[1] for s in seen[:first_trainable]) and all(s[1] for s in seen[first_trainable:])
    assert all(s[3] * stride >= 128 for s in seen[:first_trainable])
    assert seen[first_trainable][3] * stride < 128
    # autograd stops where the frozen part ends; every trainable tensor gets a gradient
    assert all((p.grad is None) != p.requires_grad for p in m.parameters())
    if stride > 2:  # a coarser stride freezes strictly more
        fewer = create_segmenter("unet", TINY, classes=2, in_channels=1, **DEC)
        assert 0 < freeze_to_stride(fewer, stride // 2) < n
    per_class = create_segmenter("unet", TINY, classes=2, in_channels=1, per_class=True, **DEC)
    assert freeze_to_stride(per_class, stride) == 2 * n  # each member alike
    with pytest.raises(ConfigError, match="freeze_stride.*2, 4, 8 or 16"):
        freeze_to_stride(m, 3)
