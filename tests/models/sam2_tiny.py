"""A tiny SAM 2.1 built by the ``sam2`` package's own builder, and the same size for our parts.

``build_sam2`` composes ``configs/sam2.1/sam2.1_hiera_t.yaml`` with hydra overrides that shrink
Hiera (5 blocks, widths 8-64), the FPN (width 32) and the input (128 px); the prompt encoder and
mask decoder keep SAM2Base's hard-coded hyper-parameters (MLP 2048, 8 heads, IoU head 256).
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SAM2_ARCH = dict(
    base="tiny",
    embed_dim=8,
    num_heads=1,
    stages=(1, 1, 2, 1),
    global_att_blocks=(3,),
    window_spec=(4, 4, 4, 4),
    window_pos_embed_bkg_spatial_size=(4, 4),
    d_model=32,
    image_size=128,
)
_OVERRIDES = [
    "++model.image_size=128",
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[4,4,4,4]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "++model.memory_attention.num_layers=1",
]


def build_reference_sam2(seed: int = 0):
    """A random-init ``SAM2Base`` (eval mode, CPU) from the package's builder and yaml."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=_OVERRIDES
    )
    with torch.no_grad():  # zero-initialised tensors would hide wiring mistakes
        model.no_mem_embed.normal_(0, 1)
    return model


def write_official_checkpoint(model, path: Path) -> Path:
    """Save ``model`` in the official layout ``{"model": state_dict}``."""
    torch.save({"model": model.state_dict()}, path)
    return path
