"""The cascaded prompter against an independent step-by-step computation written from the spec
(shared/reference/rsrefseg2.md §2.2-2.3), reading its weights by the published key names, and its
key layout against the published one (§5.2, §5.5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aerialseg.models import CascadedPrompter

C, D, ATTN, HEADS, MLP, GRID, MASK, K, P, L = 12, 8, 8, 2, 6, 4, 8, 3, 9, 5

_TEXT_OPS = [
    "self_attn_query_query1",
    "self_attn_query_query2",
    "cross_attn_query_text_query1_text",
    "cross_attn_query_text_query2_text",
    "cross_attn_query_query_query1_query2",
    "cross_attn_query_query_query2_query1",
]
_TEXT_MLPS = ["mlp_query1_2", "mlp_query2_2", "mlp_query1_3", "mlp_query2_3"]


def published_prompter_shapes(c, d, attn, mlp, grid, layers=2, queries=3, prompts=9):
    """``prompter.*`` keys and shapes as listed in the spec's §5.5 (without the prefix)."""
    shapes = {
        "text_query_pe_embedding1": (queries, c),
        "text_query_pe_embedding2": (queries, c),
        "img_pe": (1, c, grid, grid),
        "prompt_pe_embedding": (prompts, d),
        "prompt_embedding": (prompts, d),
    }

    def attention(prefix, q_dim, kv_dim):
        shapes.update(
            {
                f"{prefix}.q_proj.weight": (attn, q_dim),
                f"{prefix}.q_proj.bias": (attn,),
                f"{prefix}.k_proj.weight": (attn, kv_dim),
                f"{prefix}.k_proj.bias": (attn,),
                f"{prefix}.v_proj.weight": (attn, kv_dim),
                f"{prefix}.v_proj.bias": (attn,),
                f"{prefix}.out_proj.weight": (q_dim, attn),
                f"{prefix}.out_proj.bias": (q_dim,),
            }
        )

    def mlp_(prefix, dim):
        shapes.update(
            {
                f"{prefix}.layers.0.weight": (mlp, dim),
                f"{prefix}.layers.0.bias": (mlp,),
                f"{prefix}.layers.1.weight": (dim, mlp),
                f"{prefix}.layers.1.bias": (dim,),
            }
        )

    def norm(prefix, dim):
        shapes.update({f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)})

    for n in range(layers):
        block = f"two_queries_text_attn_layers.{n}"
        for op in _TEXT_OPS:
            attention(f"{block}.{op}", c, c)
        for name in _TEXT_MLPS:
            mlp_(f"{block}.{name}", c)
        for stream in (1, 2):
            for index in range(1, 6):
                norm(f"{block}.norm_query{stream}_{index}", c)
        block = f"queries1_to_img_attn_layers.{n}"
        attention(f"{block}.self_attn_text_text_1", c, c)
        attention(f"{block}.cross_attn_img_text_1", c, c)
        mlp_(f"{block}.mlp_img_1", c)
        for name in ("norm_text_1", "norm_img_1", "norm_img_2"):
            norm(f"{block}.{name}", c)
        block = f"prompt_queries2_img_attn_layers.{n}"
        attention(f"{block}.self_attn_text_1", c, c)
        attention(f"{block}.cross_attn_img_text_1", c, c)
        mlp_(f"{block}.mlp_img_1", c)
        for name in ("norm_text_1", "norm_img_1", "norm_img_2"):
            norm(f"{block}.{name}", c)
        attention(f"{block}.self_attn_prompt_1", d, d)
        attention(f"{block}.cross_attn_prompt_text_1", d, c)
        attention(f"{block}.cross_attn_prompt_img_1", d, c)
        mlp_(f"{block}.mlp_prompt_2", d)
        mlp_(f"{block}.mlp_prompt_3", d)
        for index in range(1, 6):
            norm(f"{block}.norm_prompt_{index}", d)
    mlp_("sparse_prompt_mlp", d)
    shapes["dense_prompt_conv.0.weight"] = (c // 2, c, 3, 3)
    shapes["dense_prompt_conv.0.bias"] = (c // 2,)
    for name in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"dense_prompt_conv.1.{name}"] = (c // 2,)
    shapes["dense_prompt_conv.1.num_batches_tracked"] = ()
    shapes["dense_prompt_conv.3.weight"] = (c, c // 2, 3, 3)
    shapes["dense_prompt_conv.3.bias"] = (c,)
    return shapes


def test_real_size_keys_equal_the_published_layout():
    with torch.device("meta"):
        prompter = CascadedPrompter(1152, 256, grid_size=32, mask_input_size=256)
    state = prompter.state_dict()
    expected = published_prompter_shapes(1152, 256, 512, 512, 32)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # §5.2: 374 tensors, 82,774,465 elements
    assert len(state) == 374
    assert sum(v.numel() for v in state.values()) == 82_774_465


# ------------------------------------------------------------------------------ the reference
def _linear(w, prefix, x):
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def _layer_norm(w, prefix, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _mlp(w, prefix, x):
    return _linear(w, f"{prefix}.layers.1", _gelu(_linear(w, f"{prefix}.layers.0", x)))


def _attention(w, prefix, q, k, v):
    """Per-sample, per-head loops: softmax(q k^T / sqrt(d)) v, heads concatenated."""
    qs, ks, vs = (
        _linear(w, f"{prefix}.{name}_proj", x) for name, x in (("q", q), ("k", k), ("v", v))
    )
    width = qs.shape[-1] // HEADS
    out = torch.zeros_like(qs)
    for b in range(qs.shape[0]):
        for h in range(HEADS):
            cols = slice(h * width, (h + 1) * width)
            scores = qs[b, :, cols] @ ks[b, :, cols].T / math.sqrt(width)
            weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
            weights = weights / weights.sum(-1, keepdim=True)
            out[b, :, cols] = weights @ vs[b, :, cols]
    return _linear(w, f"{prefix}.out_proj", out)


def _adaptive_pool(tokens, bins):
    """PyTorch's adaptive average bins: [floor(i L / n), ceil((i + 1) L / n))."""
    length = tokens.shape[1]
    rows = []
    for i in range(bins):
        start, end = (i * length) // bins, -((-(i + 1) * length) // bins)
        rows.append(tokens[:, start:end].mean(1))
    return torch.stack(rows, 1)


def _bilinear_matrix(size_in, size_out):
    """Interpolation weights (align_corners=True): out[i] = sum_j m[i, j] in[j]."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        x = i * (size_in - 1) / (size_out - 1)
        j = min(int(math.floor(x)), size_in - 2)
        m[i, j] += 1 - (x - j)
        m[i, j + 1] += x - j
    return m


def reference_prompter(w, patches, text, pooled, logit_scale, logit_bias):
    """The spec's §2.3 step by step."""
    batch = patches.shape[0]
    image = patches.flatten(2).transpose(1, 2)
    ip = w["img_pe"].flatten(2).transpose(1, 2)
    p1, p2 = w["text_query_pe_embedding1"][None], w["text_query_pe_embedding2"][None]
    q1 = q2 = _adaptive_pool(text, K)
    for n in range(2):
        b = f"two_queries_text_attn_layers.{n}"
        q1 = _layer_norm(
            w, f"{b}.norm_query1_1", q1 + _attention(w, f"{b}.{_TEXT_OPS[0]}", q1 + p1, q1 + p1, q1)
        )
        q2 = _layer_norm(
            w, f"{b}.norm_query2_1", q2 + _attention(w, f"{b}.{_TEXT_OPS[1]}", q2 + p2, q2 + p2, q2)
        )
        q1 = _layer_norm(
            w, f"{b}.norm_query1_2", q1 + _attention(w, f"{b}.{_TEXT_OPS[2]}", q1 + p1, text, text)
        )
        q1 = _layer_norm(w, f"{b}.norm_query1_3", q1 + _mlp(w, f"{b}.mlp_query1_2", q1))
        q2 = _layer_norm(
            w, f"{b}.norm_query2_2", q2 + _attention(w, f"{b}.{_TEXT_OPS[3]}", q2 + p2, text, text)
        )
        q2 = _layer_norm(w, f"{b}.norm_query2_3", q2 + _mlp(w, f"{b}.mlp_query2_2", q2))
        q1 = _layer_norm(
            w, f"{b}.norm_query1_4", q1 + _attention(w, f"{b}.{_TEXT_OPS[4]}", q1 + p1, q2 + p2, q2)
        )
        q1 = _layer_norm(w, f"{b}.norm_query1_5", q1 + _mlp(w, f"{b}.mlp_query1_3", q1))
        q2 = _layer_norm(
            w, f"{b}.norm_query2_4", q2 + _attention(w, f"{b}.{_TEXT_OPS[5]}", q2 + p2, q1 + p1, q1)
        )
        q2 = _layer_norm(w, f"{b}.norm_query2_5", q2 + _mlp(w, f"{b}.mlp_query2_3", q2))
    out_q1, out_q2 = q1, q2
    for n in range(2):
        b = f"queries1_to_img_attn_layers.{n}"
        q1 = _layer_norm(
            w,
            f"{b}.norm_text_1",
            q1 + _attention(w, f"{b}.self_attn_text_text_1", q1 + p1, q1 + p1, q1),
        )
        image = _layer_norm(
            w,
            f"{b}.norm_img_1",
            image + _attention(w, f"{b}.cross_attn_img_text_1", image + ip, q1 + p1, q1),
        )
        image = _layer_norm(w, f"{b}.norm_img_2", image + _mlp(w, f"{b}.mlp_img_1", image))
    pr = w["prompt_embedding"][None].repeat(batch, 1, 1)
    pp = w["prompt_pe_embedding"][None]
    for n in range(2):
        b = f"prompt_queries2_img_attn_layers.{n}"
        q2 = _layer_norm(
            w, f"{b}.norm_text_1", q2 + _attention(w, f"{b}.self_attn_text_1", q2 + p2, q2 + p2, q2)
        )
        image = _layer_norm(
            w,
            f"{b}.norm_img_1",
            image + _attention(w, f"{b}.cross_attn_img_text_1", image + ip, q2 + p2, q2),
        )
        image = _layer_norm(w, f"{b}.norm_img_2", image + _mlp(w, f"{b}.mlp_img_1", image))
        pr = _layer_norm(
            w,
            f"{b}.norm_prompt_1",
            pr + _attention(w, f"{b}.self_attn_prompt_1", pr + pp, pr + pp, pr),
        )
        pr = _layer_norm(
            w,
            f"{b}.norm_prompt_2",
            pr + _attention(w, f"{b}.cross_attn_prompt_text_1", pr + pp, q2 + p2, q2),
        )
        pr = _layer_norm(w, f"{b}.norm_prompt_3", pr + _mlp(w, f"{b}.mlp_prompt_2", pr))
        pr = _layer_norm(
            w,
            f"{b}.norm_prompt_4",
            pr + _attention(w, f"{b}.cross_attn_prompt_img_1", pr + pp, image + ip, image),
        )
        pr = _layer_norm(w, f"{b}.norm_prompt_5", pr + _mlp(w, f"{b}.mlp_prompt_3", pr))
    sparse = _mlp(w, "sparse_prompt_mlp", pr)

    refined = image.transpose(1, 2).reshape(batch, C, GRID, GRID)
    refined = F.conv2d(
        refined, w["dense_prompt_conv.0.weight"], w["dense_prompt_conv.0.bias"], padding=1
    )
    bn = "dense_prompt_conv.1"
    refined = (refined - w[f"{bn}.running_mean"].view(1, -1, 1, 1)) / torch.sqrt(
        w[f"{bn}.running_var"].view(1, -1, 1, 1) + 1e-5
    ) * w[f"{bn}.weight"].view(1, -1, 1, 1) + w[f"{bn}.bias"].view(1, -1, 1, 1)
    refined = _gelu(refined)
    refined = F.conv2d(
        refined, w["dense_prompt_conv.3.weight"], w["dense_prompt_conv.3.bias"], padding=1
    )
    m = _bilinear_matrix(GRID, MASK)
    refined = torch.einsum("ij,bcjk,lk->bcil", m, refined, m)
    refined = refined / torch.sqrt((refined**2).sum(1, keepdim=True))
    text_unit = pooled / torch.sqrt((pooled**2).sum(-1, keepdim=True))
    dense = (refined * text_unit[:, :, None, None]).sum(1, keepdim=True)
    dense = dense * torch.exp(logit_scale) + logit_bias
    return dict(sparse=sparse, dense=dense, queries1=out_q1, queries2=out_q2)


def test_prompter_equals_the_step_by_step_reference():
    torch.manual_seed(0)
    prompter = CascadedPrompter(
        C, D, grid_size=GRID, mask_input_size=MASK, attn_dim=ATTN, num_heads=HEADS, mlp_dim=MLP
    ).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics and biases everywhere
        for tensor in prompter.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.5)
        prompter.dense_prompt_conv[1].running_var.uniform_(0.5, 2.0)
    prompter.eval()
    weights = {k: v.clone() for k, v in prompter.state_dict().items()}
    assert set(weights) == set(published_prompter_shapes(C, D, ATTN, MLP, GRID))
    patches = torch.randn(2, C, GRID, GRID, dtype=torch.float64)
    text = torch.randn(2, L, C, dtype=torch.float64)
    pooled = torch.randn(2, C, dtype=torch.float64)
    scale, bias = (
        torch.tensor([1.3], dtype=torch.float64),
        torch.tensor([-0.7], dtype=torch.float64),
    )
    with torch.no_grad():
        ours = prompter(patches, text, pooled, scale, bias)
    expected = reference_prompter(weights, patches, text, pooled, scale, bias)
    assert ours["sparse"].shape == (2, P, D) and ours["dense"].shape == (2, 1, MASK, MASK)
    for key in ("queries1", "queries2", "sparse", "dense"):
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-10, atol=1e-10)


def test_img_pe_is_resized_bicubic_on_another_grid():
    prompter = CascadedPrompter(
        C, D, grid_size=GRID, mask_input_size=MASK, attn_dim=ATTN, num_heads=HEADS, mlp_dim=MLP
    )
    assert torch.equal(prompter.image_pe((GRID, GRID)), prompter.img_pe.flatten(2).transpose(1, 2))
    resized = F.interpolate(prompter.img_pe, size=(6, 6), mode="bicubic", align_corners=True)
    torch.testing.assert_close(prompter.image_pe((6, 6)), resized.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="not divisible"):
        CascadedPrompter(C, D, attn_dim=9, num_heads=2)
