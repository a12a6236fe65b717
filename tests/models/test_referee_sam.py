"""SAM inputs and SAM maths against ``segment_anything`` itself.

The referee model is built by ``segment_anything.build_sam._build_sam`` (the function behind
``build_sam_vit_b``: 1024 px input, 256-wide prompts, the official decoder) with a narrow, shallow
image encoder so it runs in a second on CPU; its ``state_dict`` is saved as the official ``.pth``
layout and loaded by both sides. Inputs are compared with ``ResizeLongestSide`` +
``Sam.preprocess``, the official pre-processing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from PIL import Image
from segment_anything import build_sam_vit_b, build_sam_vit_h, build_sam_vit_l
from segment_anything.build_sam import _build_sam
from segment_anything.utils.transforms import ResizeLongestSide

from aerialseg.models.data_preprocessor import ReferringDataPreProcessor
from aerialseg.models.sam import SamParts

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "configs" / "_base_" / "datasets" / "referring_pipelines.py"
NARROW = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))


@pytest.fixture(scope="module")
def sam_pair(tmp_path_factory):
    """(ours, referee): the same weights in SamParts and in segment_anything's Sam."""
    torch.manual_seed(0)
    referee = _build_sam(
        encoder_embed_dim=NARROW["embed_dim"],
        encoder_depth=NARROW["depth"],
        encoder_num_heads=NARROW["num_heads"],
        encoder_global_attn_indexes=list(NARROW["global_attn_indexes"]),
    ).eval()
    path = tmp_path_factory.mktemp("sam") / "sam_narrow.pth"
    torch.save(referee.state_dict(), path)
    ours = SamParts(arch=dict(base="vit_b", **NARROW), checkpoint=str(path)).eval()
    return ours, referee


@pytest.mark.parametrize(
    ("arch", "builder"),
    [("vit_b", build_sam_vit_b), ("vit_l", build_sam_vit_l), ("vit_h", build_sam_vit_h)],
)
def test_architectures_equal_the_official_builders(arch, builder):
    """Every tensor name and shape of the official build (no weights: built on the meta device)."""
    with torch.device("meta"):
        ours = SamParts(arch=arch).official_state_dict()
        official = builder().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }


def test_the_saved_layout_loads_in_segment_anything(sam_pair, tmp_path):
    ours, referee = sam_pair
    path = tmp_path / "ours.pth"
    torch.save(ours.official_state_dict(), path)
    reloaded = _build_sam(
        encoder_embed_dim=NARROW["embed_dim"],
        encoder_depth=NARROW["depth"],
        encoder_num_heads=NARROW["num_heads"],
        encoder_global_attn_indexes=list(NARROW["global_attn_indexes"]),
        checkpoint=str(path),
    )
    for key, value in referee.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def _write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    rgb = np.stack([255 * xx / width, 255 * yy / height, np.full_like(xx, 90.0)], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 30, size=rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    Image.fromarray(np.full((height, width), 255, dtype=np.uint8)).save(path.with_suffix(".m.png"))
    return rgb


@pytest.mark.parametrize(("height", "width"), [(300, 200), (1500, 1100)])
def test_sam_input_equals_resize_longest_side_and_preprocess(
    sam_pair, tiny_assets, tmp_path, height, width
):
    """The shipped test pipeline + our preprocessor give SAM exactly what SAM's own
    pre-processing gives it (upsampled and downsampled images)."""
    _, referee = sam_pair
    image_path = tmp_path / "scene.png"
    rgb = _write_image(image_path, height, width, seed=height)

    init_default_scope("mmseg")
    import aerialseg  # noqa: F401  (registers the transforms)

    pipeline = Compose(Config.fromfile(str(PIPELINES)).test_pipeline)
    packed = pipeline(
        dict(
            img_path=str(image_path),
            seg_map_path=str(image_path.with_suffix(".m.png")),
            text="the field",
        )
    )
    preprocessor = ReferringDataPreProcessor(vlm_path=tiny_assets["vlm"], size=1024)
    ours = preprocessor(
        dict(inputs=[packed["inputs"]], data_samples=[packed["data_samples"]]), False
    )["inputs"]["sam_pixels"]

    resized = ResizeLongestSide(1024).apply_image(rgb)
    expected = referee.preprocess(torch.from_numpy(resized).permute(2, 0, 1)[None].float())
    assert tuple(packed["inputs"].shape[1:]) == resized.shape[:2]
    assert ours.shape == expected.shape == (1, 3, 1024, 1024)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_image_embedding_equals_segment_anything(sam_pair):
    ours, referee = sam_pair
    generator = torch.Generator().manual_seed(1)
    pixels = referee.preprocess(255 * torch.rand(1, 3, 1024, 1024, generator=generator))
    with torch.no_grad():
        expected = referee.image_encoder(pixels)
        torch.testing.assert_close(ours.embed_image(pixels), expected, atol=1e-5, rtol=1e-5)
    assert expected.shape == (1, 256, 64, 64)


def _assert_prompt_paths_equal(
    ours, referee, logits, embeddings, sparse, image_index, mask_tol, iou_tol
):
    """Dense prompt (logits resized to SAM's mask-input size, then its mask downscaling) and the
    decoder, one referee call per prompt (prompts of several images in mixed order).

    Returns our masks (P x 1 x H x W)."""
    size = referee.prompt_encoder.mask_input_size
    with torch.no_grad():
        dense = ours.embed_dense_prompt(logits)
        resized = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        no_points, expected_dense = referee.prompt_encoder(points=None, boxes=None, masks=resized)
        torch.testing.assert_close(dense, expected_dense, atol=1e-5, rtol=1e-5)
        assert no_points.shape == (len(logits), 0, embeddings.shape[1])
        masks, iou = ours.decode(embeddings, image_index, sparse, dense)
        for prompt, image in enumerate(image_index.tolist()):
            expected_mask, expected_iou = referee.mask_decoder(
                image_embeddings=embeddings[image : image + 1],
                image_pe=referee.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[prompt : prompt + 1],
                dense_prompt_embeddings=expected_dense[prompt : prompt + 1],
                multimask_output=False,
            )
            torch.testing.assert_close(masks[prompt : prompt + 1], expected_mask, **mask_tol)
            torch.testing.assert_close(iou[prompt : prompt + 1], expected_iou, **iou_tol)
    return masks


def test_dense_prompt_and_decoder_equal_segment_anything(sam_pair):
    """The dense prompt path (logits resized to 256 x 256, then SAM's mask downscaling) and the
    decoder with prompts of two images in mixed order, one referee call per prompt."""
    ours, referee = sam_pair
    generator = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(3, 1, 27, 27, generator=generator)
    embeddings = torch.randn(2, 256, 64, 64, generator=generator)
    sparse = torch.randn(3, 49, 256, generator=generator)
    image_index = torch.tensor([1, 0, 1])
    masks = _assert_prompt_paths_equal(
        ours,
        referee,
        logits,
        embeddings,
        sparse,
        image_index,
        mask_tol=dict(atol=1e-4, rtol=1e-4),
        iou_tol=dict(atol=1e-5, rtol=1e-5),
    )
    assert masks.shape == (3, 1, 256, 256)
    pe = ours.grid_pe((27, 27))
    torch.testing.assert_close(pe, referee.prompt_encoder.pe_layer((27, 27))[None])


def _tiny_referee():
    """segment-anything's ``Sam`` built as ``_build_sam`` builds it, at the 'tiny' sizes (128 px
    input, width 32): the fast referee of the same maths."""
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=32,
            img_size=128,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=4,
            out_chans=32,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(8, 8), input_image_size=(128, 128), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(ours with sdpa, ours with eager, referee) on the same tiny weights, with non-zero
    relative-position tables (they start at zero, which would hide a wrong bias)."""
    torch.manual_seed(3)
    referee = _tiny_referee()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in referee.named_parameters():
            if "rel_pos" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    path = tmp_path_factory.mktemp("sam_tiny") / "sam_tiny.pth"
    torch.save(referee.state_dict(), path)
    fused = SamParts(arch="tiny", checkpoint=str(path)).eval()
    eager = SamParts(arch="tiny", checkpoint=str(path), attn_impl="eager").eval()
    return fused, eager, referee


@pytest.mark.parametrize("tile_elements", [16, None])
def test_tiny_image_embedding_and_gradients_equal_segment_anything(
    tiny_pair, monkeypatch, tile_elements
):
    """Both attention implementations, in one tile or in one-row tiles, against segment-anything's
    encoder: the embedding and the gradients of the pixels and of every weight."""
    from aerialseg.models import sam as sam_module

    if tile_elements is not None:
        monkeypatch.setattr(sam_module, "_TILE_ELEMENTS", tile_elements)
    fused, eager, referee = tiny_pair
    assert (fused.attn_impl, eager.attn_impl) == ("sdpa", "eager")
    assert all(block.attn.impl == "eager" for block in eager.image_encoder.blocks)
    generator = torch.Generator().manual_seed(5)
    # Three images: 24 window tiles of 16 tokens, more batch-heads than tokens per window.
    pixels = torch.randn(3, 3, 128, 128, generator=generator)
    outputs, grads = [], []
    for encoder in (fused.image_encoder, eager.image_encoder, referee.image_encoder):
        encoder.zero_grad()
        x = pixels.clone().requires_grad_(True)
        embedding = encoder(x) if encoder is referee.image_encoder else None
        if embedding is None:
            owner = fused if encoder is fused.image_encoder else eager
            embedding = owner.embed_image(x)
        (embedding * torch.linspace(-1, 1, embedding.numel()).view_as(embedding)).sum().backward()
        outputs.append(embedding.detach())
        grads.append([x.grad, *(p.grad for p in encoder.parameters())])
    assert outputs[0].shape == (3, 32, 8, 8)
    for output, grad in zip(outputs[:2], grads[:2]):
        torch.testing.assert_close(output, outputs[2], atol=1e-5, rtol=1e-5)
        for mine, theirs in zip(grad, grads[2]):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_tiny_prompt_paths_and_decoder_equal_segment_anything(tiny_pair):
    fused, _, referee = tiny_pair
    assert (fused.image_size, fused.embed_dim, fused.mask_input_size) == (128, 32, (32, 32))
    generator = torch.Generator().manual_seed(6)
    logits = 4 * torch.randn(3, 1, 5, 5, generator=generator)
    embeddings = torch.randn(2, 32, 8, 8, generator=generator)
    sparse = torch.randn(3, 4, 32, generator=generator)
    image_index = torch.tensor([1, 0, 1])
    masks = _assert_prompt_paths_equal(
        fused,
        referee,
        logits,
        embeddings,
        sparse,
        image_index,
        mask_tol=dict(atol=1e-5, rtol=1.3e-6),  # torch's float32 defaults
        iou_tol=dict(atol=1e-5, rtol=1.3e-6),
    )
    pe = fused.grid_pe((5, 7))
    torch.testing.assert_close(pe, referee.prompt_encoder.pe_layer((5, 7))[None])
    assert masks.shape == (3, 1, 32, 32) and pe.shape == (1, 32, 5, 7)


def test_tiny_activation_checkpointing_keeps_values_and_gradients(tiny_pair):
    """``with_cp`` recomputes the blocks in training only; values and gradients are unchanged."""
    fused, _, _ = tiny_pair
    checkpointed = SamParts(arch="tiny", with_cp=True)
    checkpointed.load_state_dict(fused.state_dict())
    assert checkpointed.image_encoder.with_cp and not fused.image_encoder.with_cp
    calls = {"plain": [], "checkpointed": []}
    handles = [
        block.register_forward_pre_hook(lambda module, args, runs=runs: runs.append(1))
        for model, runs in ((fused, calls["plain"]), (checkpointed, calls["checkpointed"]))
        for block in model.image_encoder.blocks
    ]
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randn(1, 3, 128, 128, generator=generator, requires_grad=True)
    results = []
    for model in (fused, checkpointed):
        model.train()
        model.zero_grad()
        model.embed_image(pixels).square().mean().backward()
        results.append([p.grad.clone() for p in model.image_encoder.parameters()])
        model.eval()
    with torch.no_grad():
        checkpointed.embed_image(pixels)  # evaluation: nothing to recompute
    for handle in handles:
        handle.remove()
    # Checkpointed blocks run twice per training step (forward and the recomputation in
    # backward), once in evaluation; the plain encoder runs them once.
    blocks = len(checkpointed.image_encoder.blocks)
    assert (len(calls["plain"]), len(calls["checkpointed"])) == (blocks, 3 * blocks)
    for mine, theirs in zip(*results):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize(
    ("batch_heads", "queries", "keys"),
    [(2, 16, 16), (5, 3000, 4096), (24, 4096, 4096), (64, 300, 1000)],
)
def test_attention_tiles_cover_each_row_once_within_the_budget(batch_heads, queries, keys):
    from aerialseg.models.sam import _TILE_ELEMENTS, _tiles

    covered = torch.zeros(batch_heads, queries, dtype=torch.long)
    for heads, rows in _tiles(batch_heads, queries, keys):
        assert (heads.stop - heads.start) * (rows.stop - rows.start) * keys <= _TILE_ELEMENTS
        covered[heads, rows] += 1
    assert (covered == 1).all()
