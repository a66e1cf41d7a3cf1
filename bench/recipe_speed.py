"""Training speed of the CPU recipe's knobs, one process: fp32 -> channels-last -> bf16 autocast ->
lighter U-Net decoder -> depthwise convolutions kept in fp32 under bf16 (`train.depthwise_fp32`),
then candidates for the next step (the encoder's layers up to 1/4 resolution frozen,
`train.freeze_stride: 4`; 192x192 training crops, which the model needs no padding for; the 200x200
image resized inside the model to 160x160 or 128x128, `model.kwargs.input_scale` 0.8 or 0.64, with
the logits resized back and the loss at 200x200 as in training; torch.compile with --compile),
each as images/s of forward + backward + AdamW
step and the ratio against the plain fp32 model (the first line).  The models are built as
`steelseg train` builds them (`create_segmenter`), on random 200x200 NEU-Seg-sized input padded to
224 as the model pads it.

Usage: python bench/recipe_speed.py [--encoder tu-tf_efficientnet_lite0] [--batch 16] [--steps 4] [--compile]
bf16 pays off only where the CPU has native bf16 (AVX-512 BF16 or AMX); elsewhere it can be slower.
torch.compile's own compile time (minutes on 2 cores) is printed apart, not in the img/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from steelseg.models import create_segmenter, depthwise_in_fp32, freeze_to_stride


def images_per_s(encoder: str, batch: int, steps: int, *, channels_last: bool, bf16: bool,
                 decoder: list[int] | None, arch: str = "unet", size: int = 224,
                 compiled: bool = False, dw32: bool = False, freeze: int = 0, scale: float | None = None) -> float:
    """``scale``: a 200x200 input that the model resizes by that factor (input_scale), logits back."""
    torch.manual_seed(0)
    kwargs = {"decoder_channels": decoder} if decoder else {}
    if scale is not None:
        kwargs["input_scale"] = scale
        size = 200
    model = create_segmenter(arch, encoder, 3, 1, None, False, **kwargs).train()
    if dw32:
        depthwise_in_fp32(model)
    if freeze:
        freeze_to_stride(model, freeze)
    x = torch.randn(batch, 1, size, size)
    y = (torch.rand(batch, 3, size, size) > 0.9).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    if compiled:
        model = torch.compile(model)
    times = []
    for i in range(steps + 1):  # the first step warms up (allocations, oneDNN kernels, compiling)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if compiled and i == 0:
            print(f"  (torch.compile: first step {times[0]:.0f} s)", flush=True)
    return batch * steps / sum(times[1:])


def depthwise_ms(batch: int, dtype: torch.dtype, reps: int = 5) -> tuple[float, float]:
    """Forward and backward milliseconds of one depthwise convolution (input and weight gradients)."""
    c = 144
    x = torch.randn(batch, c, 59, 59, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(c, 1, 5, 5, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    fwd = bwd = 0.0
    for i in range(reps + 1):  # the first one warms up
        t0 = time.perf_counter()
        y = torch.nn.functional.conv2d(x, w, stride=2, groups=c)
        t1 = time.perf_counter()
        y.backward(torch.ones_like(y))
        t2 = time.perf_counter()
        if i:
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return fwd / reps * 1e3, bwd / reps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="add a torch.compile row (slow to compile)")
    args = ap.parse_args()
    light = [128, 64, 32, 16, 16]
    rows = [
        ("fp32 (baseline)", dict(channels_last=False, bf16=False, decoder=None)),
        ("fp32 channels-last", dict(channels_last=True, bf16=False, decoder=None)),
        ("bf16 autocast, channels-last", dict(channels_last=True, bf16=True, decoder=None)),
        (f"bf16, channels-last, decoder {light}", dict(channels_last=True, bf16=True, decoder=light)),
        ("+ depthwise convolutions in fp32 (the recipe)", dict(channels_last=True, bf16=True, decoder=light, dw32=True)),
        ("recipe, layers up to 1/4 frozen (freeze_stride 4)", dict(channels_last=True, bf16=True, decoder=light,
                                                                 dw32=True, freeze=4)),
        ("bf16, channels-last, FPN", dict(channels_last=True, bf16=True, decoder=None, arch="fpn")),
        ("recipe on 192x192 crops", dict(channels_last=True, bf16=True, decoder=light, dw32=True, size=192)),
        ("recipe, 200x200 at input_scale 1.12 (224 inside)", dict(channels_last=True, bf16=True, decoder=light,
                                                                 dw32=True, scale=1.12)),
        ("recipe, 200x200 at input_scale 0.8 (160 inside)", dict(channels_last=True, bf16=True, decoder=light,
                                                                dw32=True, scale=0.8)),
        ("recipe, 200x200 at input_scale 0.64 (128 inside)", dict(channels_last=True, bf16=True, decoder=light,
                                                                 dw32=True, scale=0.64)),
    ]
    if args.compile:
        rows.append(("recipe + torch.compile", dict(channels_last=True, bf16=True, decoder=light, dw32=True,
                                                    compiled=True)))
    base = None
    print(f"U-Net {args.encoder}, batch {args.batch}, 1x224x224, {torch.get_num_threads()} threads")
    for name, kw in rows:
        ips = images_per_s(args.encoder, args.batch, args.steps, **kw)
        base = base or ips
        print(f"{name:48s} {ips:7.1f} img/s  {ips / base:5.2f}x", flush=True)
    print("why: one depthwise layer of the encoder (5x5, stride 2, 144 channels, 59x59 in), batch "
          f"{args.batch}, channels-last")
    for dtype in (torch.float32, torch.bfloat16):
        fwd, bwd = depthwise_ms(args.batch, dtype)
        print(f"  {str(dtype).removeprefix('torch.'):9s} forward {fwd:6.1f} ms  backward {bwd:6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
