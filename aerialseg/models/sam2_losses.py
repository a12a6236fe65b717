"""RSRefSeg 2's auxiliary training losses on the prompter's text queries (spec §4.1 items 3-4).

* :func:`query_decorrelation_loss`: mean over the batch of cos²(mean_k Q1, mean_k Q2); pushes the
  two text-query streams apart.
* :class:`QueryImageContrastiveLoss`: symmetric InfoNCE between each sample's target-masked mean
  SigLIP patch vector and its mean Q2 query, over the batch (all ranks' rows gathered without
  gradient, the local rows re-inserted), with its own learned ``logit_scale``/``logit_bias``
  (RSRefSeg 2's ``decode_head.logit_scale2``/``logit_bias2``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from mmengine import dist
from torch import nn


def query_decorrelation_loss(queries1: torch.Tensor, queries2: torch.Tensor) -> torch.Tensor:
    """B x K x C query streams -> scalar mean_b cos²(mean_k Q1_b, mean_k Q2_b)."""
    cosine = F.cosine_similarity(queries1.mean(1), queries2.mean(1), dim=-1)
    return (cosine**2).mean()


def _gather_rows(local: torch.Tensor) -> torch.Tensor:
    """All ranks' rows (no gradient), with this rank's own rows (with gradient) in place."""
    if dist.get_world_size() == 1:
        return local
    rows = dist.all_gather(local.detach())
    rows[dist.get_rank()] = local
    return torch.cat(rows)


class QueryImageContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between target-masked SigLIP patches and the mean Q2 query.

    Args:
        init_scale: initial ``exp(logit_scale)`` (1/0.07).
        init_bias: initial ``exp(logit_bias)`` (0.5).
    """

    def __init__(self, init_scale: float = 1 / 0.07, init_bias: float = 0.5):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(math.log(init_bias)))

    def forward(
        self, patches: torch.Tensor, queries2: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            patches: raw SigLIP patch map B x C x g x g.
            queries2: the stage-0 Q2 stream B x K x C.
            labels: padded targets B x S x S (0, 1 and 255 for padding, which counts as target
                as in RSRefSeg 2).

        Returns:
            the scalar loss (CE over rows + CE over columns) / 2.
        """
        grid = patches.shape[-2:]
        target = F.interpolate(
            labels[:, None].to(patches.dtype), size=grid, mode="bilinear", align_corners=True
        )
        target = (target > 0.5).to(patches.dtype)
        image = F.normalize((patches * target).mean(dim=(2, 3)), dim=-1)
        text = F.normalize(queries2.mean(1), dim=-1)
        image, text = _gather_rows(image), _gather_rows(text)
        logits = self.logit_scale.exp() * image @ text.t() + self.logit_bias
        diagonal = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, diagonal) + F.cross_entropy(logits.t(), diagonal)) / 2
