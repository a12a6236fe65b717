"""Checkpoint round trips through the real loaders: HF SigLIP folders, official SAM .pth."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from aerialseg.models import CheckpointMismatchError, SamParts, SiglipTowers
from aerialseg.models.sam import sam_arch

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(TOWER, vocab_size=99, max_position_embeddings=64, bos_token_id=None, eos_token_id=2)


def test_sam_pth_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    original = SamParts(arch="tiny").eval()
    path = tmp_path / "sam.pth"
    torch.save(original.official_state_dict(), path)
    torch.manual_seed(2)
    loaded = SamParts(arch="tiny", checkpoint=str(path)).eval()
    for key, value in original.official_state_dict().items():
        assert torch.equal(value, loaded.official_state_dict()[key]), key
    pixels = torch.randn(2, 3, 128, 128)
    assert torch.equal(original.embed_image(pixels), loaded.embed_image(pixels))
    # the official layout: exactly the three prefixes of segment-anything's Sam
    prefixes = {key.split(".")[0] for key in torch.load(path, weights_only=True)}
    assert prefixes == {"image_encoder", "prompt_encoder", "mask_decoder"}


def test_sam_official_architectures_match_segment_anything():
    from segment_anything import sam_model_registry

    reference = sam_model_registry["vit_b"]()
    ours = SamParts(arch="vit_b")
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    found = {k: v.shape for k, v in ours.official_state_dict().items()}
    assert found == expected


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s.pop("mask_decoder.iou_token.weight"),
            r"1 missing keys: mask_decoder\.iou_tok",
        ),
        (lambda s: s.update(extra=torch.zeros(1)), r"1 unexpected keys: extra"),
        (
            lambda s: s.update({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 32)}),
            r"1 tensors with another shape: image_encoder\.pos_embed \(checkpoint \(1, 4, 4, 32\)",
        ),
    ],
)
def test_sam_key_mismatch_names_file_and_keys(tmp_path, edit, expected):
    state = SamParts(arch="tiny").official_state_dict()
    edit(state)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError, match=expected) as info:
        SamParts(arch="tiny", checkpoint=str(path))
    assert str(path) in str(info.value) and "SAM 'tiny'" in str(info.value)


def test_sam_wrong_size_and_hf_layout_are_explained(tmp_path):
    bigger = SamParts(arch=dict(base="tiny", depth=3, global_attn_indexes=(2,)))
    path = tmp_path / "deeper.pth"
    torch.save(bigger.official_state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: image_encoder\.blocks\.2"):
        SamParts(arch="tiny", checkpoint=str(path))

    hf = tmp_path / "hf.pth"
    torch.save({"vision_encoder.patch_embed.projection.weight": torch.zeros(1)}, hf)
    with pytest.raises(CheckpointMismatchError, match="Hugging Face transformers SAM"):
        SamParts(arch="tiny", checkpoint=str(hf))


def test_sam_architecture_errors():
    with pytest.raises(ValueError, match="unknown SAM architecture 'vit_x'"):
        sam_arch("vit_x")
    with pytest.raises(ValueError, match="unknown SAM architecture keys"):
        sam_arch(dict(base="vit_b", depthh=3))
    assert sam_arch("vit_l")["embed_dim"] == 1024 and sam_arch("vit_l")["image_size"] == 1024


def _save_siglip(folder, model_type="siglip"):
    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    torch.manual_seed(3)
    if model_type == "siglip":
        vision = dict(TOWER, image_size=32, patch_size=8)
        model = SiglipModel(SiglipConfig(text_config=TEXT, vision_config=vision))
    else:
        vision = dict(TOWER, num_patches=16, patch_size=8)
        model = Siglip2Model(Siglip2Config(text_config=TEXT, vision_config=vision))
    model.save_pretrained(folder)
    return model.eval()


def test_siglip_folder_round_trip_matches_transformers(tmp_path):
    reference = _save_siglip(tmp_path / "siglip")
    towers = SiglipTowers(pretrained=str(tmp_path / "siglip")).eval()
    assert towers.grid_size == 4 and towers.width == 32 and towers.text_length == 64
    saved = load_file(tmp_path / "siglip" / "model.safetensors")
    ours = dict(towers.named_parameters())
    for key, value in saved.items():
        name = key.replace("vision_model.", "vision.").replace("text_model.", "text.")
        if name.startswith("vision.head."):
            assert name not in ours  # the unused attention-pooling head is dropped
            continue
        assert torch.equal(ours[name], value), key

    pixels = torch.randn(2, 3, 32, 32)
    ids = torch.randint(3, 99, (2, 64))
    with torch.no_grad():
        patches = towers.encode_image(pixels)
        tokens, pooled = towers.encode_text(ids, torch.ones_like(ids))
        hidden = reference.vision_model(pixel_values=pixels).last_hidden_state
        text = reference.text_model(input_ids=ids)
    assert patches.shape == (2, 32, 4, 4)
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), hidden)
    torch.testing.assert_close(tokens, text.last_hidden_state)
    torch.testing.assert_close(pooled, text.pooler_output)


def test_siglip2_naflex_patches_follow_the_processor_layout(tmp_path):
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    reference = _save_siglip(tmp_path / "siglip2", "siglip2")
    towers = SiglipTowers(pretrained=str(tmp_path / "siglip2")).eval()
    assert towers.model_type == "siglip2" and towers.image_size == 32
    pixels = torch.randn(2, 3, 32, 32)
    patches = torch.stack([convert_image_to_patches(image, 8) for image in pixels])
    with torch.no_grad():
        ours = towers.encode_image(pixels)
        hidden = reference.vision_model(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
            spatial_shapes=torch.tensor([[4, 4], [4, 4]]),
        ).last_hidden_state
    torch.testing.assert_close(ours.flatten(2).transpose(1, 2), hidden)


def test_siglip_incomplete_or_missing_folder_is_refused(tmp_path):
    _save_siglip(tmp_path / "siglip")
    weights = tmp_path / "siglip" / "model.safetensors"
    state = load_file(weights)
    state.pop("text_model.head.weight")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match=re.escape("text_model.head.weight")):
        SiglipTowers(pretrained=str(tmp_path / "siglip"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        SiglipTowers(pretrained=str(tmp_path / "nowhere"))
