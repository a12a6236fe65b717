"""Fusion of SigLIP image and text features into SAM prompts (the RSRefSeg "prompter").

Given the SigLIP patch map V, the per-token text features T and the pooled text vector t:

* local activation: for every real (non-padding) text token, sigmoid(scale * cos(T_l, V) + bias);
  their mean over tokens re-weights V, averaged 1:1 with V;
* global activation: scale * cos(t, V) + bias, whose sigmoid re-weights V, and whose raw logits
  are also returned as the dense prompt;
* [local, global, V] -> 1x1 conv to SAM's width D + norm + GELU, plus SAM's positional encoding
  on the patch grid -> ``num_downsample`` x (3x3 stride-2 conv + norm + GELU) -> 1x1 conv; every
  output cell is one sparse prompt token (27 -> 14 -> 7: 49 tokens for SigLIP so400m/14@384).

``scale`` and ``bias`` are SigLIP's own ``logit_scale.exp()`` and ``logit_bias``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import nn


class ActivationPrompter(nn.Module):
    """Turn SigLIP features into sparse prompt tokens and a dense prompt map.

    Args:
        vlm_width: C, the SigLIP width.
        prompt_dim: D, SAM's prompt width (256).
        num_downsample: stride-2 blocks after the channel reduction.
        norm_cfg: mmcv norm layer; GroupNorm by default because the per-GPU batch is small.
        act_cfg: mmcv activation layer.
    """

    def __init__(
        self,
        vlm_width: int,
        prompt_dim: int = 256,
        num_downsample: int = 2,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
    ):
        super().__init__()
        norm_cfg = norm_cfg or dict(type="GN", num_groups=32)
        act_cfg = act_cfg or dict(type="GELU")
        self.reduce = ConvModule(3 * vlm_width, prompt_dim, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.downsample = nn.Sequential(
            *[
                ConvModule(
                    prompt_dim,
                    prompt_dim,
                    3,
                    stride=2,
                    padding=1,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                )
                for _ in range(num_downsample)
            ]
        )
        self.project = nn.Conv2d(prompt_dim, prompt_dim, 1)

    @staticmethod
    def similarity_logits(
        text: torch.Tensor,
        patches: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> torch.Tensor:
        """SigLIP logits between text vectors and every patch.

        Args:
            text: B x K x C (K text vectors per sample).
            patches: B x C x g x g.

        Returns:
            B x K x g x g logits, ``exp(logit_scale) * cosine + logit_bias``.
        """
        cosine = torch.einsum(
            "bkc,bchw->bkhw", F.normalize(text, dim=-1), F.normalize(patches, dim=1)
        )
        return cosine * logit_scale.exp() + logit_bias

    def forward(
        self,
        patches: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        text_pooled: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        grid_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            patches: V, B x C x g x g SigLIP patch features.
            text_tokens: T, B x L x C per-token text features.
            text_mask: B x L, 1 for real tokens and 0 for padding.
            text_pooled: t, B x C pooled text vector.
            logit_scale, logit_bias: SigLIP's scalars (shape 1).
            grid_pe: 1 x D x g x g SAM positional encoding on the patch grid.

        Returns:
            sparse prompt tokens B x T x D (T = ceil(g / 2**num_downsample) ** 2) and the global
            activation logits B x 1 x g x g (the dense prompt).
        """
        local = self.similarity_logits(text_tokens, patches, logit_scale, logit_bias).sigmoid()
        weights = text_mask.to(local.dtype)[:, :, None, None]
        local = (local * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
        local_feature = 0.5 * (patches * local + patches)

        global_logits = self.similarity_logits(
            text_pooled[:, None], patches, logit_scale, logit_bias
        )
        global_feature = patches * global_logits.sigmoid()

        fused = torch.cat([local_feature, global_feature, patches], dim=1)
        prompts = self.reduce(fused) + grid_pe.to(fused.dtype)
        prompts = self.project(self.downsample(prompts))
        return prompts.flatten(2).transpose(1, 2), global_logits
