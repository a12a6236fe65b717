"""SAM 2.1 image encoder, prompt encoder and mask decoder from the official ``sam2`` package.

The parts are the ``sam2`` package's own classes (``Hiera``, ``FpnNeck``, ``ImageEncoder``,
``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``) with the hyper-parameters of its hydra
configs ``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` (``SAM2_ARCHS``) and of
``SAM2Base._build_sam_heads``, under the attribute names of ``SAM2Base``. An official checkpoint
(``sam2.1_hiera_{tiny,small,base_plus,large}.pt``, weights under ``"model"``) therefore loads
verbatim; its video-only modules (memory attention and encoder, object pointers, ...) are not
built, and only those known prefixes may be left over (``SAM2_VIDEO_PREFIXES``): anything else
missing, unexpected or of another shape is a :class:`CheckpointMismatchError` with the list.

The image path is ``SAM2ImagePredictor.set_image``'s: Hiera trunk -> FPN neck (``scalp=1`` drops
the stride-32 level) -> ``conv_s0``/``conv_s1`` of the mask decoder on the stride-4/8 levels ->
``no_mem_embed`` added to the stride-16 level. With S = ``image_size`` (1024) and D = ``d_model``
(256) for B images:

* image embedding ``E``: B x D x S/16 x S/16 (64 x 64),
* high-resolution features ``s0``: B x D/8 x S/4 x S/4 and ``s1``: B x D/4 x S/8 x S/8.

The mask decoder's eval-time "dynamic multimask" rule (``build_sam2``'s default
``apply_postprocessing=True``) is on by default: in eval mode, when the stability of mask 0
(#(logit > delta) / #(logit > -delta)) is below the threshold, the mask of tokens 1-3 with the
highest predicted IoU replaces it; in training mode mask 0 is always used.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from aerialseg.models.checkpoint_keys import check_state_dict, load_official_state

# ImageNet statistics on the [0, 1] scale (sam2.utils.transforms.SAM2Transforms).
SAM2_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM2_PIXEL_STD = (0.229, 0.224, 0.225)

# Trunk hyper-parameters of configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml (b+ uses Hiera's defaults
# for what its yaml leaves out).
SAM2_ARCHS = {
    "tiny": dict(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
        window_spec=(8, 4, 14, 7),
    ),
    "small": dict(
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 11, 2),
        global_att_blocks=(7, 10, 13),
        window_pos_embed_bkg_spatial_size=(7, 7),
        window_spec=(8, 4, 14, 7),
    ),
    "base_plus": dict(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
        window_spec=(8, 4, 14, 7),
    ),
    "large": dict(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_pos_embed_bkg_spatial_size=(7, 7),
        window_spec=(8, 4, 16, 8),
    ),
}
# What every SAM 2.1 config and SAM2Base._build_sam_heads fix for all sizes.
SAM2_COMMON = dict(
    image_size=1024,
    d_model=256,
    backbone_stride=16,
    mask_in_chans=16,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
    iou_head_hidden_dim=256,
)
# Official checkpoint file names, for messages.
SAM2_CHECKPOINT_NAMES = {
    "tiny": "sam2.1_hiera_tiny.pt",
    "small": "sam2.1_hiera_small.pt",
    "base_plus": "sam2.1_hiera_base_plus.pt",
    "large": "sam2.1_hiera_large.pt",
}
# Modules of SAM2Base that only the video predictor uses; an official checkpoint holds them.
SAM2_VIDEO_PREFIXES = (
    "memory_attention.",
    "memory_encoder.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "mask_downsample.",
)
DYNAMIC_MULTIMASK_DEFAULTS = dict(enabled=True, delta=0.05, threshold=0.98)


def sam2_arch(arch: str | dict) -> dict:
    """Full hyper-parameters for ``'tiny'|'small'|'base_plus'|'large'`` or a dict overriding them.

    A dict may name a base (``base='tiny'``) and override any key; tests build a few-thousand-
    parameter SAM 2 so (``d_model=32, image_size=128, stages=(1, 1, 1, 1), ...``).
    """
    if isinstance(arch, str):
        arch = dict(base=arch)
    arch = dict(arch)
    base = arch.pop("base", None)
    if base is not None and base not in SAM2_ARCHS:
        raise ValueError(
            f"unknown SAM 2.1 architecture '{base}', expected one of {sorted(SAM2_ARCHS)}"
        )
    full = {**SAM2_COMMON, **(SAM2_ARCHS[base] if base else {}), **arch}
    required = set(SAM2_COMMON) | set(SAM2_ARCHS["tiny"])
    unknown = set(full) - required
    if unknown:
        raise ValueError(f"unknown SAM 2.1 architecture keys: {sorted(unknown)}")
    missing = required - set(full)
    if missing:
        raise ValueError(f"SAM 2.1 architecture is missing {sorted(missing)} (or give base=...)")
    for key in ("stages", "global_att_blocks", "window_pos_embed_bkg_spatial_size", "window_spec"):
        full[key] = tuple(full[key])
    # 4 Hiera stages -> 4 FPN levels, of which scalp=1 leaves the 3 the decoder reads
    if len(full["stages"]) != 4 or len(full["window_spec"]) != 4:
        raise ValueError(
            f"SAM 2.1 needs 4 Hiera stages and 4 window sizes, got stages {full['stages']} and "
            f"window_spec {full['window_spec']}"
        )
    if full["image_size"] % full["backbone_stride"]:
        raise ValueError(
            f"SAM 2.1 image_size {full['image_size']} is not a multiple of the stride "
            f"{full['backbone_stride']}"
        )
    return full


class Sam2Parts(nn.Module):
    """SAM 2.1's image encoder, prompt encoder, mask decoder and ``no_mem_embed``.

    Attribute names are ``SAM2Base``'s (``image_encoder``, ``sam_prompt_encoder``,
    ``sam_mask_decoder``, ``no_mem_embed``), so ``state_dict()`` keys equal the official ones.

    Args:
        arch: ``'tiny'``, ``'small'``, ``'base_plus'``, ``'large'`` or a dict (:func:`sam2_arch`).
        checkpoint: official SAM 2.1 ``.pt`` (``{"model": state_dict}``) or ``None`` (random init).
        dynamic_multimask: ``dict(enabled, delta, threshold)`` of the eval-time fallback from
            mask token 0 to the best of tokens 1-3 (``build_sam2``'s defaults: on, 0.05, 0.98).
    """

    def __init__(
        self,
        arch: str | dict = "large",
        checkpoint: str | None = None,
        dynamic_multimask: dict | None = None,
    ):
        super().__init__()
        from sam2.modeling.backbones.hieradet import Hiera
        from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
        from sam2.modeling.position_encoding import PositionEmbeddingSine
        from sam2.modeling.sam.mask_decoder import MaskDecoder
        from sam2.modeling.sam.prompt_encoder import PromptEncoder
        from sam2.modeling.sam.transformer import TwoWayTransformer

        self.arch_name = arch if isinstance(arch, str) else arch.get("base", "custom")
        self.arch = a = sam2_arch(arch)
        multimask = {**DYNAMIC_MULTIMASK_DEFAULTS, **(dynamic_multimask or {})}
        unknown = set(multimask) - set(DYNAMIC_MULTIMASK_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown dynamic_multimask keys {sorted(unknown)}")
        self.dynamic_multimask = multimask
        d_model, size = a["d_model"], a["image_size"]
        # Hiera's constructor reads a tensor with .item(), which fails under a meta-device
        # context (used to list a model's keys without allocating it); its trunk is built on CPU.
        with torch.device("cpu"):
            trunk = Hiera(
                embed_dim=a["embed_dim"],
                num_heads=a["num_heads"],
                stages=a["stages"],
                global_att_blocks=a["global_att_blocks"],
                window_pos_embed_bkg_spatial_size=a["window_pos_embed_bkg_spatial_size"],
                window_spec=a["window_spec"],
            )
        neck = FpnNeck(
            position_encoding=PositionEmbeddingSine(
                num_pos_feats=d_model, normalize=True, scale=None, temperature=10000
            ),
            d_model=d_model,
            backbone_channel_list=list(trunk.channel_list),
            fpn_top_down_levels=[2, 3],
            fpn_interp_model="nearest",
        )
        self.image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=1)
        grid = size // a["backbone_stride"]
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=d_model,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=a["mask_in_chans"],
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=d_model,
                mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=d_model,
            iou_head_depth=3,
            iou_head_hidden_dim=a["iou_head_hidden_dim"],
            use_high_res_features=True,
            iou_prediction_use_sigmoid=True,
            pred_obj_scores=True,
            pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True,
            dynamic_multimask_via_stability=bool(multimask["enabled"]),
            dynamic_multimask_stability_delta=float(multimask["delta"]),
            dynamic_multimask_stability_thresh=float(multimask["threshold"]),
        )
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d_model))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)
        self.checkpoint_path = checkpoint
        if checkpoint is not None:
            self.load_official_checkpoint(checkpoint)

    @property
    def image_size(self) -> int:
        """S, the side of the (padded) input canvas."""
        return self.arch["image_size"]

    @property
    def embed_dim(self) -> int:
        """D, the width of prompts and image embeddings."""
        return self.arch["d_model"]

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Size of the dense (mask) prompt input: 4 x the embedding grid (256 x 256)."""
        return tuple(self.sam_prompt_encoder.mask_input_size)

    def load_official_checkpoint(self, path: str | os.PathLike) -> None:
        """Load an official SAM 2.1 ``.pt`` strictly (the video-only modules are skipped).

        Raises:
            CheckpointMismatchError: keys missing, unexpected (other than the video modules) or of
                another shape, with their list.
            TypeError: the file is not a state dict (under ``"model"``).
        """
        state = load_official_state(
            path, "SAM 2.1", "expected the official layout {'model': state_dict}"
        )
        image_keys = {k: v for k, v in state.items() if not k.startswith(SAM2_VIDEO_PREFIXES)}
        expected = self.state_dict()
        arch = self.arch_name
        hint = (
            f"Use the official {SAM2_CHECKPOINT_NAMES[arch]}"
            if arch in SAM2_CHECKPOINT_NAMES
            else "Use an official SAM 2.1 checkpoint of this architecture"
        )
        if any(key.startswith(("image_encoder.base_model", "backbone.model.")) for key in state):
            hint = (
                "This looks like an RSRefSeg 2 model; convert it with tools/convert_rsrefseg2.py "
                "and load the result as the model checkpoint instead"
            )
        what = (
            f"SAM 2.1 '{arch}' (embed_dim {self.arch['embed_dim']}, stages "
            f"{self.arch['stages']}, d_model {self.arch['d_model']})"
        )
        check_state_dict(expected, image_keys, path, what, hint)
        self.load_state_dict(image_keys, strict=True)

    def embed_image(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """B x 3 x S x S pixels (ImageNet-normalised [0, 1] RGB) -> the decoder's image inputs.

        Returns:
            ``image_embed`` B x D x S/16 x S/16 (``no_mem_embed`` added), ``high_res_s0``
            B x D/8 x S/4 x S/4 and ``high_res_s1`` B x D/4 x S/8 x S/8.
        """
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"SAM 2.1 expects {self.image_size}x{self.image_size} inputs, got "
                f"{tuple(pixels.shape[-2:])}"
            )
        levels = self.image_encoder(pixels)["backbone_fpn"]
        decoder = self.sam_mask_decoder
        return dict(
            image_embed=levels[2] + self.no_mem_embed.reshape(1, -1, 1, 1),
            high_res_s0=decoder.conv_s0(levels[0]),
            high_res_s1=decoder.conv_s1(levels[1]),
        )

    def embed_dense_prompt(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """N x 1 x 4h x 4w prompt logits (at :attr:`mask_input_size`) -> N x D x h x w."""
        if tuple(mask_logits.shape[-2:]) != self.mask_input_size:
            raise ValueError(
                f"dense prompt must be {self.mask_input_size}, got {tuple(mask_logits.shape[-2:])}"
            )
        return self.sam_prompt_encoder.mask_downscaling(mask_logits)

    def decode(
        self,
        image_features: dict[str, torch.Tensor],
        image_index: torch.Tensor,
        sparse_prompts: torch.Tensor,
        dense_prompts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt (``multimask_output=False``, dynamic fallback in eval mode).

        Args:
            image_features: :meth:`embed_image` of B images.
            image_index: N (long), the image of each prompt.
            sparse_prompts: N x T x D prompt tokens (fed as they are: no point embedding or PE).
            dense_prompts: N x D x h x w (:meth:`embed_dense_prompt`).

        Returns:
            mask logits N x 1 x 4h x 4w and predicted IoU N x 1.
        """
        masks, iou, _, _ = self.sam_mask_decoder(
            image_embeddings=image_features["image_embed"][image_index],
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_prompts,
            dense_prompt_embeddings=dense_prompts,
            multimask_output=False,
            repeat_image=False,
            high_res_features=[
                image_features["high_res_s0"][image_index],
                image_features["high_res_s1"][image_index],
            ],
        )
        return masks, iou
