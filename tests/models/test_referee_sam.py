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


def test_dense_prompt_and_decoder_equal_segment_anything(sam_pair):
    """The dense prompt path (logits resized to 256 x 256, then SAM's mask downscaling) and the
    decoder with prompts of two images in mixed order, one referee call per prompt."""
    ours, referee = sam_pair
    generator = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(3, 1, 27, 27, generator=generator)
    embeddings = torch.randn(2, 256, 64, 64, generator=generator)
    sparse = torch.randn(3, 49, 256, generator=generator)
    image_index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        dense = ours.embed_dense_prompt(logits)
        resized = F.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)
        no_points, expected_dense = referee.prompt_encoder(points=None, boxes=None, masks=resized)
        torch.testing.assert_close(dense, expected_dense, atol=1e-5, rtol=1e-5)
        assert no_points.shape == (3, 0, 256)

        masks, iou = ours.decode(embeddings, image_index, sparse, dense)
        for prompt, image in enumerate(image_index.tolist()):
            expected_mask, expected_iou = referee.mask_decoder(
                image_embeddings=embeddings[image : image + 1],
                image_pe=referee.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[prompt : prompt + 1],
                dense_prompt_embeddings=expected_dense[prompt : prompt + 1],
                multimask_output=False,
            )
            torch.testing.assert_close(
                masks[prompt : prompt + 1], expected_mask, atol=1e-4, rtol=1e-4
            )
            torch.testing.assert_close(iou[prompt : prompt + 1], expected_iou, atol=1e-5, rtol=1e-5)
    assert masks.shape == (3, 1, 256, 256)
    pe = ours.grid_pe((27, 27))
    torch.testing.assert_close(pe, referee.prompt_encoder.pe_layer((27, 27))[None])
