"""SAM 2.1 parts against the ``sam2`` package: strict loading of its checkpoints, the image path of
``SAM2ImagePredictor``, its mask decoder with prompt tokens, and the dynamic multimask rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aerialseg.models import CheckpointMismatchError, Sam2Parts
from aerialseg.models.sam2 import SAM2_ARCHS, SAM2_PIXEL_MEAN, SAM2_PIXEL_STD, sam2_arch
from tests.models.sam2_tiny import TINY_SAM2_ARCH, build_reference_sam2, write_official_checkpoint

_YAML = {
    "tiny": "sam2.1_hiera_t",
    "small": "sam2.1_hiera_s",
    "base_plus": "sam2.1_hiera_b+",
    "large": "sam2.1_hiera_l",
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The package's tiny SAM2Base, its official-layout file and our parts loaded from it."""
    model = build_reference_sam2()
    path = write_official_checkpoint(model, tmp_path_factory.mktemp("sam2") / "tiny.pt")
    ours = Sam2Parts(TINY_SAM2_ARCH, checkpoint=str(path)).eval()
    return model, path, ours


@pytest.mark.parametrize("size", sorted(_YAML))
def test_arch_table_equals_the_package_yaml(size):
    import sam2
    from sam2.modeling.backbones.hieradet import Hiera

    yaml = OmegaConf.load(f"{sam2.__path__[0]}/configs/sam2.1/{_YAML[size]}.yaml").model
    trunk = {k: v for k, v in yaml.image_encoder.trunk.items() if k != "_target_"}
    # Hiera's own defaults fill what a yaml leaves out (b+).
    defaults = Hiera.__init__.__defaults__
    names = Hiera.__init__.__code__.co_varnames[1 : 1 + len(defaults)]
    full = {**dict(zip(names, defaults)), **trunk}
    arch = sam2_arch(size)
    for key in SAM2_ARCHS[size]:
        assert tuple(np.atleast_1d(full[key]).tolist()) == tuple(np.atleast_1d(arch[key])), key
    assert yaml.image_size == arch["image_size"]
    assert yaml.image_encoder.neck.d_model == arch["d_model"]
    assert yaml.image_encoder.scalp == 1 and list(yaml.image_encoder.neck.fpn_top_down_levels) == [
        2,
        3,
    ]
    assert yaml.directly_add_no_mem_embed and yaml.use_high_res_features_in_sam


def test_official_checkpoint_loads_strictly_with_every_tensor(reference):
    model, _, ours = reference
    official = model.state_dict()
    loaded = ours.state_dict()
    assert set(loaded) < set(official)
    for key, value in loaded.items():
        assert torch.equal(value, official[key]), key


def test_mismatched_checkpoints_are_refused_with_the_keys(reference, tmp_path):
    model, path, _ = reference
    state = model.state_dict()
    with pytest.raises(CheckpointMismatchError, match="another shape.*pos_embed"):
        Sam2Parts(dict(TINY_SAM2_ARCH, window_pos_embed_bkg_spatial_size=(5, 5)), str(path))
    extra = dict(state, **{"sam_mask_decoder.extra.weight": torch.zeros(1)})
    torch.save({"model": extra}, tmp_path / "extra.pt")
    with pytest.raises(
        CheckpointMismatchError, match=r"1 unexpected keys: sam_mask_decoder\.extra"
    ):
        Sam2Parts(TINY_SAM2_ARCH, str(tmp_path / "extra.pt"))
    missing = {k: v for k, v in state.items() if k != "no_mem_embed"}
    torch.save({"model": missing}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointMismatchError, match="1 missing keys: no_mem_embed"):
        Sam2Parts(TINY_SAM2_ARCH, str(tmp_path / "missing.pt"))


def _pixels(image: np.ndarray) -> torch.Tensor:
    unit = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(SAM2_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM2_PIXEL_STD).view(1, 3, 1, 1)
    return (unit - mean) / std


def test_image_and_dense_prompt_path_equal_sam2_image_predictor(reference):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model, _, ours = reference
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    predictor = SAM2ImagePredictor(model)
    # the predictor hard-codes the feature sizes of a 1024 px input; these are 128 px ones
    predictor._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]
    predictor.set_image(image)
    with torch.no_grad():
        features = ours.embed_image(_pixels(image))
    torch.testing.assert_close(features["image_embed"], predictor._features["image_embed"])
    s0, s1 = predictor._features["high_res_feats"]
    torch.testing.assert_close(features["high_res_s0"], s0)
    torch.testing.assert_close(features["high_res_s1"], s1)

    dense_logits = torch.from_numpy(rng.normal(0, 4, size=(1, 1, 32, 32)).astype(np.float32))
    masks, iou, _ = predictor._predict(
        None, None, mask_input=dense_logits, multimask_output=False, return_logits=True
    )
    with torch.no_grad():
        dense = ours.embed_dense_prompt(dense_logits)
        ours_masks, ours_iou = ours.decode(
            features, torch.zeros(1, dtype=torch.long), torch.zeros(1, 0, 32), dense
        )
    torch.testing.assert_close(ours_iou, iou)
    # the predictor returns its masks resized to the image (128 px, here the canvas)
    resized = torch.nn.functional.interpolate(
        ours_masks, size=(128, 128), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(resized, masks, atol=1e-4, rtol=1e-4)


def test_prompt_tokens_and_batch_equal_sam2_mask_decoder(reference):
    model, _, ours = reference
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 128, 128)
    sparse = torch.randn(3, 9, 32)
    mask_logits = torch.randn(3, 1, 32, 32) * 3
    image_index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        backbone = model.forward_image(pixels)
        _, feats, _, sizes = model._prepare_backbone_features(backbone)
        feats[-1] = feats[-1] + model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(2, -1, *s) for f, s in zip(feats, sizes)]
        _, dense = model.sam_prompt_encoder(points=None, boxes=None, masks=mask_logits)
        expected, expected_iou, _, _ = model.sam_mask_decoder(
            image_embeddings=maps[2][image_index],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            repeat_image=False,
            high_res_features=[maps[0][image_index], maps[1][image_index]],
        )
        features = ours.embed_image(pixels)
        masks, iou = ours.decode(
            features, image_index, sparse, ours.embed_dense_prompt(mask_logits)
        )
    torch.testing.assert_close(masks, expected)
    torch.testing.assert_close(iou, expected_iou)


def _decode_all_tokens(parts, features, sparse, dense):
    decoder = parts.sam_mask_decoder
    index = torch.arange(len(sparse))
    masks, iou, _, _ = decoder.predict_masks(
        image_embeddings=features["image_embed"][index],
        image_pe=parts.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        repeat_image=False,
        high_res_features=[features["high_res_s0"][index], features["high_res_s1"][index]],
    )
    return masks, iou


def _rule_by_hand(masks, iou, delta, threshold):
    """Mask 0 unless #(>delta)/#(>-delta) of mask 0 is below threshold, then best IoU of 1-3."""
    chosen = []
    for logits, scores in zip(masks, iou):
        inner = sum(1 for v in logits[0].flatten().tolist() if v > delta)
        outer = sum(1 for v in logits[0].flatten().tolist() if v > -delta)
        stability = inner / outer if outer else 1.0
        if stability >= threshold:
            chosen.append(0)
        else:
            best = max(range(1, 4), key=lambda k: scores[k].item())
            chosen.append(best)
    return chosen


@pytest.mark.parametrize("threshold", [0.0, 0.98, 1.01])
def test_dynamic_multimask_rule_in_eval_mask_zero_in_training(reference, threshold):
    _, path, _ = reference
    parts = Sam2Parts(TINY_SAM2_ARCH, str(path), dynamic_multimask=dict(threshold=threshold))
    torch.manual_seed(2)
    pixels = torch.randn(4, 3, 128, 128)
    sparse = torch.randn(4, 9, 32)
    with torch.no_grad():
        features = parts.embed_image(pixels)
        dense = parts.embed_dense_prompt(torch.randn(4, 1, 32, 32) * 2)
        all_masks, all_iou = _decode_all_tokens(parts, features, sparse, dense)
        chosen = _rule_by_hand(all_masks, all_iou, 0.05, threshold)
        parts.eval()
        masks, iou = parts.decode(features, torch.arange(4), sparse, dense)
        parts.train()
        train_masks, _ = parts.decode(features, torch.arange(4), sparse, dense)
    for row, token in enumerate(chosen):
        torch.testing.assert_close(masks[row, 0], all_masks[row, token])
        torch.testing.assert_close(iou[row, 0], all_iou[row, token])
    torch.testing.assert_close(train_masks[:, 0], all_masks[:, 0])
    if threshold == 0.0:
        assert chosen == [0, 0, 0, 0]
    if threshold > 1:
        assert 0 not in chosen


def test_unknown_arch_and_input_size_are_refused(reference):
    _, _, ours = reference
    with pytest.raises(ValueError, match="unknown SAM 2.1 architecture 'huge'"):
        sam2_arch("huge")
    with pytest.raises(ValueError, match="needs 4 Hiera stages"):
        sam2_arch(dict(TINY_SAM2_ARCH, stages=(1, 2, 1), window_spec=(4, 4, 4)))
    with pytest.raises(ValueError, match="expects 128x128"):
        ours.embed_image(torch.zeros(1, 3, 64, 64))
