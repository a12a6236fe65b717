"""SAM (segment-anything) image encoder, prompt encoder and mask decoder from official ``.pth``.

The three modules are segment-anything's own classes with the hyper-parameters of
``segment_anything.build_sam`` (``vit_b``/``vit_l``/``vit_h``), or smaller ones for tests. The
official checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``)
are plain state dicts with the prefixes ``image_encoder.``, ``prompt_encoder.`` and
``mask_decoder.``; they are loaded through :func:`aerialseg.engine.safe_torch_load` and checked
strictly (every key, every shape).

Shapes below use B images, N prompts, D = ``prompt_embed_dim`` (256), S = ``image_size`` (1024),
h = w = S / ``patch_size`` (64).
"""

from __future__ import annotations

import functools
import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aerialseg.models.checkpoint_keys import check_state_dict, load_official_state

# RGB statistics on the 0-255 scale, as in segment_anything.build_sam.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

SAM_ARCHS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    # A few-thousand-parameter SAM for CPU tests and the demo (see aerialseg.models.tiny).
    "tiny": dict(
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        image_size=128,
        window_size=4,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
    ),
}
# Everything segment_anything.build_sam fixes for all sizes.
SAM_COMMON = dict(
    image_size=1024,
    patch_size=16,
    window_size=14,
    prompt_embed_dim=256,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
)
SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def sam_arch(arch: str | dict) -> dict:
    """Full hyper-parameters for ``'vit_b'|'vit_l'|'vit_h'|'tiny'`` or a dict that overrides them.

    A dict may name a base with ``base='vit_b'`` and override any key (tests build tiny SAMs so).
    """
    if isinstance(arch, str):
        arch = dict(base=arch)
    arch = dict(arch)
    base = arch.pop("base", None)
    if base is not None and base not in SAM_ARCHS:
        raise ValueError(f"unknown SAM architecture '{base}', expected one of {sorted(SAM_ARCHS)}")
    full = {**SAM_COMMON, **(SAM_ARCHS[base] if base else {}), **arch}
    required = set(SAM_COMMON) | set(SAM_ARCHS["vit_b"])
    unknown = set(full) - required
    if unknown:
        raise ValueError(f"unknown SAM architecture keys: {sorted(unknown)}")
    missing = required - set(full)
    if missing:
        raise ValueError(f"SAM architecture is missing {sorted(missing)} (or give base='vit_b')")
    return full


# Elements of one tile's logits (8 MB in fp32): the fused attention works on (heads, query rows)
# tiles, so the bias, softmax and their gradients never make full passes over the
# 12 x 4096 x 4096 matrix that segment-anything's eager code builds for global attention at
# 64 x 64, while each tile is still large enough for efficient matmuls.
_TILE_ELEMENTS = 2**21
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def _tiles(batch_heads: int, queries: int, keys: int) -> list[tuple[slice, slice]]:
    """(batch-head slice, query-row slice) tiles covering a BH x N_q x N_k logits tensor."""
    rows = max(1, min(queries, _TILE_ELEMENTS // keys))
    heads = max(1, min(batch_heads, _TILE_ELEMENTS // (rows * keys)))
    return [
        (slice(h, min(h + heads, batch_heads)), slice(r, min(r + rows, queries)))
        for h in range(0, batch_heads, heads)
        for r in range(0, queries, rows)
    ]


@functools.cache
def _grid_indicator(kh: int, kw: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(kh + kw) x kh*kw 0/1 matrix: column (i, j) picks row i of the first kh and row j of the
    last kw, so [rel_h, rel_w] @ it = rel_h[..., i] + rel_w[..., j]."""
    rows = torch.eye(kh, dtype=dtype, device=device).repeat_interleave(kw, dim=1)
    columns = torch.eye(kw, dtype=dtype, device=device).repeat(1, kh)
    return torch.cat([rows, columns])


def _rel_pos_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Decomposed relative-position bias: rel_h BH x n x kh, rel_w BH x n x kw -> BH x n x kh*kw."""
    kh, kw = rel_h.shape[-1], rel_w.shape[-1]
    if rel_h.dtype == rel_w.dtype == torch.bfloat16 and rel_h.device.type == "cpu" and kw < 32:
        # PyTorch's CPU add barely vectorises a short broadcast inner size in bf16 (14 x 14
        # windows: 4.6 ms vs 0.66 ms per 54 x 196 x 196 bias). The product with a 0/1 matrix is the
        # same number: a*1 + b*1 summed in fp32 and rounded once to bf16, as the add does.
        indicator = _grid_indicator(kh, kw, rel_h.dtype, rel_h.device)
        return torch.cat([rel_h, rel_w], dim=-1) @ indicator
    return (rel_h[..., :, None] + rel_w[..., None, :]).flatten(2)


class _RelPosAttention(torch.autograd.Function):
    """softmax(scale * q k^T + bias(rel_h, rel_w)) v, tiled; q, k, v BH x N x d -> BH x N x d.

    The forward runs PyTorch's fused SDPA kernel per tile with that tile's bias as an additive
    mask, so no probability matrix is stored. The kernel has no gradient for a mask on CPU (and
    the bias depends on q, which trains under LoRA), so autograd would fall back to the unfused
    maths; the backward instead recomputes each tile's probabilities in cache and forms the
    gradients of q, k, v and of both bias factors there (the flash-attention backward).
    """

    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale):
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        for heads, rows in _tiles(q.shape[0], q.shape[1], k.shape[1]):
            bias = _rel_pos_bias(rel_h[heads, rows], rel_w[heads, rows]).to(q.dtype)
            out[heads, rows] = F.scaled_dot_product_attention(
                q[heads, rows][:, None],
                k[heads][:, None],
                v[heads][:, None],
                attn_mask=bias[:, None],
                scale=scale,
            )[:, 0]
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_h, rel_w, out = ctx.saved_tensors
        scale = ctx.scale
        kh, kw = rel_h.shape[-1], rel_w.shape[-1]
        grad_out = grad_out.contiguous()
        # softmax backward: dS = P * (dP - D), D_i = sum_j P_ij dP_ij = <dO_i, O_i>
        row_term = (grad_out * out).sum(-1, keepdim=True)
        grad_q = torch.empty_like(q)
        grad_h = q.new_empty(q.shape[:-1] + (kh,))
        grad_w = q.new_empty(q.shape[:-1] + (kw,))
        # Keys and values transposed once (d x N), and their gradients accumulated transposed, so
        # every per-tile product is a plain matmul whose inner size is the tile's rows.
        key_t, value_t = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
        grad_key_t, grad_value_t = torch.zeros_like(key_t), torch.zeros_like(value_t)
        for heads, rows in _tiles(q.shape[0], q.shape[1], k.shape[1]):
            bias = _rel_pos_bias(rel_h[heads, rows], rel_w[heads, rows]).to(q.dtype)
            query, grad = q[heads, rows], grad_out[heads, rows]
            probs = torch.softmax(bias.baddbmm_(query, key_t[heads], alpha=scale), dim=-1)
            grad_value_t[heads].baddbmm_(grad.transpose(1, 2), probs)
            grad_logits = torch.bmm(grad, value_t[heads])
            grad_logits.sub_(row_term[heads, rows]).mul_(probs)
            grid = grad_logits.view(grad_logits.shape[0], -1, kh, kw)
            grad_h[heads, rows] = grid.sum(-1)
            grad_w[heads, rows] = grid.sum(-2)
            grad_q[heads, rows] = torch.bmm(grad_logits, k[heads]).mul_(scale)
            grad_key_t[heads].baddbmm_(query.transpose(1, 2), grad_logits, alpha=scale)
        grad_k, grad_v = grad_key_t.transpose(1, 2), grad_value_t.transpose(1, 2)
        return grad_q, grad_k, grad_v, grad_h, grad_w, None


@functools.cache
def _attention_class():
    from segment_anything.modeling.image_encoder import Attention, get_rel_pos

    class FusedAttention(Attention):
        """segment-anything's ``Attention`` with the same parameters and maths, computed with
        ``scaled_dot_product_attention`` (``impl='sdpa'``) or by the original code (``'eager'``).
        """

        impl = "sdpa"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """B x H x W x C tokens (a window or the whole grid) -> B x H x W x C."""
            if self.impl == "eager" or not self.use_rel_pos:
                return super().forward(x)
            batch, height, width, _ = x.shape
            qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(
                3, batch * self.num_heads, height * width, -1
            )
            rel_h = torch.einsum(
                "bhwc,hkc->bhwk",
                q.reshape(-1, height, width, q.shape[-1]),
                get_rel_pos(height, height, self.rel_pos_h),
            ).flatten(1, 2)
            rel_w = torch.einsum(
                "bhwc,wkc->bhwk",
                q.reshape(-1, height, width, q.shape[-1]),
                get_rel_pos(width, width, self.rel_pos_w),
            ).flatten(1, 2)
            out = _RelPosAttention.apply(q, k, v, rel_h, rel_w, self.scale)
            out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
            return self.proj(out.reshape(batch, height, width, -1))

    return FusedAttention


def _image_encoder_class():
    from segment_anything.modeling import ImageEncoderViT

    class CheckpointedImageEncoderViT(ImageEncoderViT):
        """``ImageEncoderViT`` that can recompute its blocks in backward to save memory."""

        with_cp = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """B x 3 x S x S normalised pixels -> B x D x h x w image embedding."""
            # PatchEmbed returns a permuted view of the convolution's B x C x h x w output; made
            # contiguous once here, the residual stream is not carried in that layout through
            # every block (each LayerNorm and linear layer would copy it, every residual add
            # would run on mismatched strides).
            x = self.patch_embed(x).contiguous()
            if self.pos_embed is not None:
                x = x + self.pos_embed
            for block in self.blocks:
                if self.with_cp and self.training and x.requires_grad:
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            return self.neck(x.permute(0, 3, 1, 2))

    return CheckpointedImageEncoderViT


class SamParts(nn.Module):
    """SAM's three modules, built with segment-anything and filled from an official checkpoint.

    Args:
        arch: ``'vit_b'``, ``'vit_l'``, ``'vit_h'`` or a dict (see :func:`sam_arch`).
        checkpoint: official SAM ``.pth``; ``None`` leaves segment-anything's random init.
        with_cp: recompute image-encoder blocks in backward (activation checkpointing).
        attn_impl: image-encoder attention: ``'sdpa'`` (fused kernel, relative-position bias as
            an additive mask; same maths) or ``'eager'`` (segment-anything's own code, the
            reference the equivalence test compares with).
    """

    def __init__(
        self,
        arch: str | dict = "vit_b",
        checkpoint: str | None = None,
        with_cp=False,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        if attn_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_impl must be one of {ATTENTION_IMPLEMENTATIONS}, got '{attn_impl}'"
            )
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        self.arch_name = arch if isinstance(arch, str) else arch.get("base", "custom")
        self.arch = sam_arch(arch)
        a = self.arch
        grid = a["image_size"] // a["patch_size"]
        self.image_encoder = _image_encoder_class()(
            depth=a["depth"],
            embed_dim=a["embed_dim"],
            img_size=a["image_size"],
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=a["num_heads"],
            patch_size=a["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(a["global_attn_indexes"]),
            window_size=a["window_size"],
            out_chans=a["prompt_embed_dim"],
        )
        self.image_encoder.with_cp = with_cp
        fused = _attention_class()
        for block in self.image_encoder.blocks:
            # Same parameters and state-dict keys; only the forward changes.
            block.attn.__class__ = fused
            block.attn.impl = attn_impl
        self.attn_impl = attn_impl
        self.prompt_encoder = PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(a["image_size"], a["image_size"]),
            mask_in_chans=a["mask_in_chans"],
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a["decoder_depth"],
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.checkpoint_path = checkpoint
        if checkpoint is not None:
            self.load_official_checkpoint(checkpoint)

    @property
    def image_size(self) -> int:
        return self.arch["image_size"]

    @property
    def embed_dim(self) -> int:
        """D, the width of prompts and image embeddings."""
        return self.arch["prompt_embed_dim"]

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Size of the dense mask prompt, 4h x 4w (256 x 256 at S = 1024)."""
        return tuple(self.prompt_encoder.mask_input_size)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """This model's tensors under the official checkpoint's key names."""
        return {
            f"{prefix}{key}": value
            for prefix, module in zip(
                SAM_PREFIXES, (self.image_encoder, self.prompt_encoder, self.mask_decoder)
            )
            for key, value in module.state_dict().items()
        }

    def load_official_checkpoint(self, path: str | os.PathLike) -> None:
        """Load an official SAM ``.pth`` strictly; raise ``CheckpointMismatchError`` otherwise."""
        state = load_official_state(path, "SAM")
        what = (
            f"SAM '{self.arch_name}' (embed_dim {self.arch['embed_dim']}, "
            f"depth {self.arch['depth']})"
        )
        hint = "Use the official segment-anything checkpoint of this architecture"
        if any(key.startswith(("vision_encoder.", "sam.")) for key in state):
            hint = (
                "This looks like a Hugging Face transformers SAM (facebook/sam-vit-*) state dict; "
                "download the official segment-anything .pth (e.g. sam_vit_b_01ec64.pth) instead"
            )
        check_state_dict(
            self.official_state_dict(),
            state,
            path,
            what,
            hint,
        )
        for prefix, module in zip(
            SAM_PREFIXES, (self.image_encoder, self.prompt_encoder, self.mask_decoder)
        ):
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True
            )

    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S pixels normalised with SAM's statistics -> B x D x h x w."""
        return self.image_encoder(pixels)

    def grid_pe(self, size: tuple[int, int]) -> torch.Tensor:
        """SAM's random-Fourier positional encoding on a size[0] x size[1] grid -> 1 x D x H x W."""
        return self.prompt_encoder.pe_layer(size).unsqueeze(0)

    def embed_dense_prompt(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """N x 1 x H x W prompt logits -> N x D x h x w through SAM's mask-input path.

        The map is resized to SAM's mask input size (4h x 4w) first.
        """
        mask_logits = F.interpolate(
            mask_logits, size=self.mask_input_size, mode="bilinear", align_corners=False
        )
        return self.prompt_encoder.mask_downscaling(mask_logits)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        image_index: torch.Tensor,
        sparse_prompts: torch.Tensor,
        dense_prompts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the mask decoder for N prompts over B images (one mask per prompt).

        Args:
            image_embeddings: B x D x h x w.
            image_index: N (long), the image of each prompt.
            sparse_prompts: N x T x D prompt tokens.
            dense_prompts: N x D x h x w dense prompt embeddings.

        Returns:
            mask logits N x 1 x 4h x 4w and predicted IoU N x 1.
        """
        image_pe = self.prompt_encoder.get_dense_pe()
        rows_per_image, masks, ious = [], [], []
        # segment-anything's decoder pairs ONE image with many prompts (it repeats the image over
        # the prompts), so prompts are decoded per image.
        for image in image_index.unique(sorted=True).tolist():
            rows = (image_index == image).nonzero(as_tuple=True)[0]
            mask, iou = self.mask_decoder(
                image_embeddings=image_embeddings[image : image + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse_prompts[rows],
                dense_prompt_embeddings=dense_prompts[rows],
                multimask_output=False,
            )
            rows_per_image.append(rows)
            masks.append(mask)
            ious.append(iou)
        back_to_prompt_order = torch.argsort(torch.cat(rows_per_image))
        return torch.cat(masks)[back_to_prompt_order], torch.cat(ious)[back_to_prompt_order]
