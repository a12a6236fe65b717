"""Binary mask losses for one referred target per sample, built from mmseg's loss modules.

mmseg's ``CrossEntropyLoss(use_sigmoid=True)`` handles 1-channel logits with an ignore index, but
its ``DiceLoss`` one-hot encodes a B x H x W label into the *background* channel when there is a
single class and has no pixel mask. So Dice receives the target as B x 1 x H x W, and ignored
(padding) pixels are removed from both sides: target 0 and logit -1e4 (probability 0).
Dice is computed per sample, then averaged.
"""

from __future__ import annotations

import torch
from mmseg.models.losses import DiceLoss
from mmseg.registry import MODELS
from torch import nn

# Large enough that sigmoid() is exactly 0 in fp32/bf16, small enough for fp16.
_IGNORED_LOGIT = -1.0e4


class ReferringMaskLoss(nn.Module):
    """A sum of mmseg losses on B x 1 x H x W mask logits.

    Args:
        losses: mmseg loss configs, e.g. ``[dict(type='CrossEntropyLoss', use_sigmoid=True,
            loss_weight=0.9, avg_non_ignore=True), dict(type='DiceLoss', naive_dice=True,
            loss_weight=0.1, eps=1.0)]``. Each module's ``loss_name`` keys the output.
        ignore_index: label of pixels that carry no supervision (padding).
    """

    def __init__(self, losses: list[dict], ignore_index: int = 255):
        super().__init__()
        self.losses = nn.ModuleList(MODELS.build(cfg) for cfg in losses)
        names = [loss.loss_name for loss in self.losses]
        if len(set(names)) != len(names):
            raise ValueError(f"mask losses need distinct loss_name values, got {names}")
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            logits: B x 1 x H x W mask logits.
            labels: B x H x W, 1 = target, 0 = background, ``ignore_index`` = no supervision.

        Returns:
            ``{loss_name: scalar}``.
        """
        # fp32 sums over ~1M pixels per sample: bf16 would lose the Dice ratio's precision
        logits = logits.float()
        valid = labels != self.ignore_index
        target = ((labels == 1) & valid).unsqueeze(1).to(logits.dtype)
        outputs = {}
        for loss in self.losses:
            if isinstance(loss, DiceLoss):
                dice_logits = logits.masked_fill(~valid.unsqueeze(1), _IGNORED_LOGIT)
                value = loss(dice_logits, target)
            else:
                value = loss(logits, labels, ignore_index=self.ignore_index)
            outputs[loss.loss_name] = value
        return outputs
