"""Losses over per-class sigmoid outputs: BCE, Dice, BCE+Dice, focal, Lovasz and BCE+Lovasz, built by
name (``train.loss``) for segmenters and classifiers."""

from __future__ import annotations

import torch
from torch import nn

from steelseg.errors import ConfigError

__all__ = ["build_loss"]

class _SumLoss(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


class _FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, alpha: float = 0.25) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from torchvision.ops import sigmoid_focal_loss

        return sigmoid_focal_loss(logits, target, self.alpha, self.gamma, reduction="mean")


class _PerClassLovasz(nn.Module):
    """Lovasz hinge per class channel over the whole batch, averaged over classes.

    The surrogate of the mean over classes of each class's IoU over the batch, which is what
    mIoU (a confusion matrix summed over the split) rewards; smp's multilabel Lovasz flattens all
    classes into one binary problem instead, so a large class would outweigh a small one.
    """

    def __init__(self) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.binary = smp.losses.LovaszLoss(mode="binary", per_image=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # the sort and the cumulative sums want full precision under bf16
        return torch.stack([self.binary(logits[:, c:c + 1], target[:, c:c + 1])
                            for c in range(logits.shape[1])]).mean()


def build_loss(name: str, task: str, num_classes: int, pos_weight: list[float] | None = None) -> nn.Module:
    """BCE, Dice, BCE+Dice, focal, Lovasz or BCE+Lovasz over per-class sigmoid outputs."""
    import segmentation_models_pytorch as smp

    pw = None
    if pos_weight is not None:
        if len(pos_weight) != num_classes:
            raise ConfigError(f"train.pos_weight: {len(pos_weight)} values for {num_classes} classes")
        pw = torch.tensor(pos_weight, dtype=torch.float32)
        if task == "segment":
            pw = pw.view(-1, 1, 1)
    bce = nn.BCEWithLogitsLoss(pos_weight=pw)
    if name == "bce":
        return bce
    if name == "focal":
        return _FocalLoss()
    dice = smp.losses.DiceLoss(mode="multilabel", from_logits=True)
    if name == "dice":
        return dice
    if name == "bce_dice":
        return _SumLoss(bce, dice)
    if name == "lovasz":
        return _PerClassLovasz()
    if name == "bce_lovasz":
        return _SumLoss(bce, _PerClassLovasz())
    raise ConfigError(f"train.loss: unknown loss {name!r}")
