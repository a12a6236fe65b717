"""The cascaded (second-order) prompter of RSRefSeg 2: SigLIP features -> SAM 2 prompts.

Module and parameter names are RSRefSeg 2's, so a published ``prompter.*`` tensor loads under the
same key (spec ``shared/reference/rsrefseg2.md`` §2.2-2.3, §5.5). Notation for B samples:
C = SigLIP width (1152), D = prompt width (256), g = patch grid side (32), L = text length,
K = text queries per stream (3), P = prompt tokens (9).

Building blocks: :class:`PromptAttention` (q/k/v projections to ``attn_dim`` = 512 split over 8
heads, scaled dot-product attention without mask, output projection), :class:`PromptMLP`
(``layers.0`` -> exact GELU -> ``layers.1``, hidden 512) and ``nn.LayerNorm`` (eps 1e-5). Every
attention/MLP op is residual and followed by its LayerNorm (post-norm); positional terms are added
to queries and keys, never to values. Nothing masks padding tokens.

Forward (V: B x g² x C image tokens, T: B x L x C text tokens, t: B x C pooled text):

0. Q1 = Q2 = adaptive average pool of T to K tokens; two blocks of ``two_queries_text_attn_layers``
   (self-attention per stream, cross-attention to T, then each stream attends to the other).
1. ``queries1_to_img_attn_layers`` (2 blocks): Q1 self-attention, image tokens attend to Q1.
2. ``prompt_queries2_img_attn_layers`` (2 blocks): Q2 self-attention, image tokens attend to Q2,
   the P learned prompts attend to themselves, to Q2 and to the image tokens.
3. Sparse prompts ``sparse_prompt_mlp(prompts)``: B x P x D.
4. Dense prompt: refined image map -> ``dense_prompt_conv`` -> bilinear (align_corners=True) to
   SAM's mask-input size -> channel-L2-normalised dot product with the L2-normalised pooled text,
   times ``exp(logit_scale)`` plus ``logit_bias``: B x 1 x 4h x 4w logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptAttention(nn.Module):
    """Multi-head attention with separate q/k/v input widths (no mask, no dropout).

    Args:
        query_dim: width of the queries (and of the output).
        key_dim: width of keys and values.
        attn_dim: inner width, split over ``num_heads``.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int = 512, num_heads: int = 8):
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim {attn_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(query_dim, attn_dim)
        self.k_proj = nn.Linear(key_dim, attn_dim)
        self.v_proj = nn.Linear(key_dim, attn_dim)
        self.out_proj = nn.Linear(attn_dim, query_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: B x Nq x query_dim, k/v: B x Nk x key_dim -> B x Nq x query_dim."""
        out = F.scaled_dot_product_attention(
            self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        )
        batch, heads, tokens, width = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, heads * width))


class PromptMLP(nn.Module):
    """``layers.0`` (dim -> hidden), exact GELU, ``layers.1`` (hidden -> dim)."""

    def __init__(self, dim: int, hidden_dim: int = 512):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden_dim), nn.Linear(hidden_dim, dim)])
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


class TwoQueryTextBlock(nn.Module):
    """Stage 0: two query streams read the text tokens and each other (C wide)."""

    def __init__(self, dim: int, attn_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()

        def attention():
            return PromptAttention(dim, dim, attn_dim, num_heads)

        self.self_attn_query_query1 = attention()
        self.self_attn_query_query2 = attention()
        self.cross_attn_query_text_query1_text = attention()
        self.cross_attn_query_text_query2_text = attention()
        self.cross_attn_query_query_query1_query2 = attention()
        self.cross_attn_query_query_query2_query1 = attention()
        for name in ("mlp_query1_2", "mlp_query2_2", "mlp_query1_3", "mlp_query2_3"):
            self.add_module(name, PromptMLP(dim, mlp_dim))
        for stream in (1, 2):
            for index in range(1, 6):
                self.add_module(f"norm_query{stream}_{index}", nn.LayerNorm(dim))

    def forward(self, q1, q2, pe1, pe2, text):
        """q1, q2: B x K x C; pe1, pe2: 1 x K x C; text: B x L x C -> updated (q1, q2)."""
        a = q1 + pe1
        q1 = self.norm_query1_1(q1 + self.self_attn_query_query1(a, a, q1))
        b = q2 + pe2
        q2 = self.norm_query2_1(q2 + self.self_attn_query_query2(b, b, q2))
        q1 = self.norm_query1_2(q1 + self.cross_attn_query_text_query1_text(q1 + pe1, text, text))
        q1 = self.norm_query1_3(q1 + self.mlp_query1_2(q1))
        q2 = self.norm_query2_2(q2 + self.cross_attn_query_text_query2_text(q2 + pe2, text, text))
        q2 = self.norm_query2_3(q2 + self.mlp_query2_2(q2))
        q1 = self.norm_query1_4(
            q1 + self.cross_attn_query_query_query1_query2(q1 + pe1, q2 + pe2, q2)
        )
        q1 = self.norm_query1_5(q1 + self.mlp_query1_3(q1))
        q2 = self.norm_query2_4(
            q2 + self.cross_attn_query_query_query2_query1(q2 + pe2, q1 + pe1, q1)
        )
        q2 = self.norm_query2_5(q2 + self.mlp_query2_3(q2))
        return q1, q2


class QueryImageBlock(nn.Module):
    """Stage 1: the queries attend to themselves, then the image tokens attend to the queries."""

    def __init__(self, dim: int, attn_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.self_attn_text_text_1 = PromptAttention(dim, dim, attn_dim, num_heads)
        self.cross_attn_img_text_1 = PromptAttention(dim, dim, attn_dim, num_heads)
        self.mlp_img_1 = PromptMLP(dim, mlp_dim)
        self.norm_text_1 = nn.LayerNorm(dim)
        self.norm_img_1 = nn.LayerNorm(dim)
        self.norm_img_2 = nn.LayerNorm(dim)

    def forward(self, queries, query_pe, image, image_pe):
        """queries B x K x C, image B x g² x C -> updated (queries, image)."""
        a = queries + query_pe
        queries = self.norm_text_1(queries + self.self_attn_text_text_1(a, a, queries))
        image = self.norm_img_1(
            image + self.cross_attn_img_text_1(image + image_pe, queries + query_pe, queries)
        )
        image = self.norm_img_2(image + self.mlp_img_1(image))
        return queries, image


class QueryImagePromptBlock(nn.Module):
    """Stage 2: like stage 1 for Q2, then the prompt tokens read themselves, Q2 and the image."""

    def __init__(self, dim: int, prompt_dim: int, attn_dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.self_attn_text_1 = PromptAttention(dim, dim, attn_dim, num_heads)
        self.cross_attn_img_text_1 = PromptAttention(dim, dim, attn_dim, num_heads)
        self.mlp_img_1 = PromptMLP(dim, mlp_dim)
        self.norm_text_1 = nn.LayerNorm(dim)
        self.norm_img_1 = nn.LayerNorm(dim)
        self.norm_img_2 = nn.LayerNorm(dim)
        self.self_attn_prompt_1 = PromptAttention(prompt_dim, prompt_dim, attn_dim, num_heads)
        self.cross_attn_prompt_text_1 = PromptAttention(prompt_dim, dim, attn_dim, num_heads)
        self.cross_attn_prompt_img_1 = PromptAttention(prompt_dim, dim, attn_dim, num_heads)
        self.mlp_prompt_2 = PromptMLP(prompt_dim, mlp_dim)
        self.mlp_prompt_3 = PromptMLP(prompt_dim, mlp_dim)
        for index in range(1, 6):
            self.add_module(f"norm_prompt_{index}", nn.LayerNorm(prompt_dim))

    def forward(self, queries, query_pe, image, image_pe, prompts, prompt_pe):
        """queries B x K x C, image B x g² x C, prompts B x P x D -> the three updated."""
        a = queries + query_pe
        queries = self.norm_text_1(queries + self.self_attn_text_1(a, a, queries))
        keys = queries + query_pe
        image = self.norm_img_1(image + self.cross_attn_img_text_1(image + image_pe, keys, queries))
        image = self.norm_img_2(image + self.mlp_img_1(image))
        p = prompts + prompt_pe
        prompts = self.norm_prompt_1(prompts + self.self_attn_prompt_1(p, p, prompts))
        prompts = self.norm_prompt_2(
            prompts + self.cross_attn_prompt_text_1(prompts + prompt_pe, keys, queries)
        )
        prompts = self.norm_prompt_3(prompts + self.mlp_prompt_2(prompts))
        prompts = self.norm_prompt_4(
            prompts + self.cross_attn_prompt_img_1(prompts + prompt_pe, image + image_pe, image)
        )
        prompts = self.norm_prompt_5(prompts + self.mlp_prompt_3(prompts))
        return queries, image, prompts


class CascadedPrompter(nn.Module):
    """RSRefSeg 2's cascaded prompter (see the module docstring for the data flow).

    Args:
        vlm_width: C, SigLIP's width (text and image).
        prompt_dim: D, SAM 2's prompt width.
        grid_size: g, SigLIP's patch grid side (``img_pe`` is 1 x C x g x g).
        mask_input_size: side of SAM 2's dense prompt input (256 at 1024).
        num_queries: K, tokens per text-query stream.
        num_prompts: P, sparse prompt tokens.
        num_layers: blocks per stage.
        attn_dim, num_heads, mlp_dim: attention inner width, heads, MLP hidden width.
    """

    def __init__(
        self,
        vlm_width: int,
        prompt_dim: int = 256,
        grid_size: int = 32,
        mask_input_size: int = 256,
        num_queries: int = 3,
        num_prompts: int = 9,
        num_layers: int = 2,
        attn_dim: int = 512,
        num_heads: int = 8,
        mlp_dim: int = 512,
    ):
        super().__init__()
        c, d = vlm_width, prompt_dim
        self.num_queries = num_queries
        self.mask_input_size = mask_input_size
        self.text_query_pe_embedding1 = nn.Parameter(torch.randn(num_queries, c))
        self.text_query_pe_embedding2 = nn.Parameter(torch.randn(num_queries, c))
        self.img_pe = nn.Parameter(torch.randn(1, c, grid_size, grid_size))
        self.prompt_embedding = nn.Parameter(torch.randn(num_prompts, d))
        self.prompt_pe_embedding = nn.Parameter(torch.randn(num_prompts, d))
        self.two_queries_text_attn_layers = nn.ModuleList(
            TwoQueryTextBlock(c, attn_dim, num_heads, mlp_dim) for _ in range(num_layers)
        )
        self.queries1_to_img_attn_layers = nn.ModuleList(
            QueryImageBlock(c, attn_dim, num_heads, mlp_dim) for _ in range(num_layers)
        )
        self.prompt_queries2_img_attn_layers = nn.ModuleList(
            QueryImagePromptBlock(c, d, attn_dim, num_heads, mlp_dim) for _ in range(num_layers)
        )
        self.sparse_prompt_mlp = PromptMLP(d, mlp_dim)
        self.dense_prompt_conv = nn.Sequential(
            nn.Conv2d(c, c // 2, 3, padding=1),
            nn.BatchNorm2d(c // 2),
            nn.GELU(),
            nn.Conv2d(c // 2, c, 3, padding=1),
        )

    def image_pe(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learned image PE on a grid[0] x grid[1] patch grid, flattened: 1 x g² x C."""
        pe = self.img_pe
        if tuple(pe.shape[-2:]) != tuple(grid):
            pe = F.interpolate(pe, size=grid, mode="bicubic", align_corners=True)
        return pe.flatten(2).transpose(1, 2)

    def forward(
        self,
        patches: torch.Tensor,
        text_tokens: torch.Tensor,
        text_pooled: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """
        Args:
            patches: V as a map, B x C x g x g (post-LayerNorm SigLIP patches).
            text_tokens: T, B x L x C (padding tokens included, as RSRefSeg 2 does).
            text_pooled: t, B x C.
            logit_scale, logit_bias: SigLIP's contrastive scalars (shape 1).

        Returns:
            ``sparse`` B x P x D, ``dense`` B x 1 x M x M logits (M = ``mask_input_size``),
            ``queries1``/``queries2`` B x K x C (stage-0 outputs, used by the training losses).
        """
        batch, channels, rows, cols = patches.shape
        image = patches.flatten(2).transpose(1, 2)
        image_pe = self.image_pe((rows, cols))
        pe1 = self.text_query_pe_embedding1[None]
        pe2 = self.text_query_pe_embedding2[None]
        q1 = F.adaptive_avg_pool1d(text_tokens.transpose(1, 2), self.num_queries).transpose(1, 2)
        q2 = q1
        for block in self.two_queries_text_attn_layers:
            q1, q2 = block(q1, q2, pe1, pe2, text_tokens)
        queries1, queries2 = q1, q2
        for block in self.queries1_to_img_attn_layers:
            q1, image = block(q1, pe1, image, image_pe)
        prompts = self.prompt_embedding[None].expand(batch, -1, -1)
        prompt_pe = self.prompt_pe_embedding[None]
        for block in self.prompt_queries2_img_attn_layers:
            q2, image, prompts = block(q2, pe2, image, image_pe, prompts, prompt_pe)
        sparse = self.sparse_prompt_mlp(prompts)

        refined = image.transpose(1, 2).reshape(batch, channels, rows, cols)
        refined = self.dense_prompt_conv(refined)
        refined = F.interpolate(
            refined,
            size=(self.mask_input_size, self.mask_input_size),
            mode="bilinear",
            align_corners=True,
        )
        refined = refined / refined.norm(dim=1, keepdim=True)
        text = text_pooled / text_pooled.norm(dim=-1, keepdim=True)
        dense = torch.einsum("bchw,bc->bhw", refined, text)[:, None]
        dense = dense * logit_scale.exp() + logit_bias
        return dict(sparse=sparse, dense=dense, queries1=queries1, queries2=queries2)
