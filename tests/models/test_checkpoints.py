"""Checkpoint round trips through the real loaders: HF SigLIP folders, official SAM .pth."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from aerialseg.models import CheckpointMismatchError, SamParts, SiglipTowers
from aerialseg.models.sam import sam_arch
from aerialseg.models.siglip import load_siglip_model

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(TOWER, vocab_size=99, max_position_embeddings=64, bos_token_id=None, eos_token_id=2)


def test_sam_pth_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    original = SamParts(arch="tiny").eval()
    path = tmp_path / "sam.pth"
    torch.save(original.official_state_dict(), path)
    torch.manual_seed(2)
    loaded = SamParts(arch="tiny", checkpoint=str(path)).eval()
    assert (original.checkpoint_path, loaded.checkpoint_path) == (None, str(path))
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
    assert str(info.value).endswith(
        ". Use the official segment-anything checkpoint of this architecture"
    )


def test_sam_wrong_size_and_hf_layout_are_explained(tmp_path):
    bigger = SamParts(arch=dict(base="tiny", depth=3, global_attn_indexes=(2,)))
    path = tmp_path / "deeper.pth"
    torch.save(bigger.official_state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: image_encoder\.blocks\.2"):
        SamParts(arch="tiny", checkpoint=str(path))

    hint = (
        ". This looks like a Hugging Face transformers SAM (facebook/sam-vit-*) state dict; "
        "download the official segment-anything .pth (e.g. sam_vit_b_01ec64.pth) instead"
    )
    for key in ("vision_encoder.patch_embed.projection.weight", "sam.mask_decoder.iou_token"):
        hf = tmp_path / "hf.pth"
        torch.save({key: torch.zeros(1)}, hf)
        with pytest.raises(CheckpointMismatchError) as info:
            SamParts(arch="tiny", checkpoint=str(hf))
        assert str(info.value).endswith(hint)

    not_a_state = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state)
    expected = f"SAM checkpoint '{not_a_state}' is not a state dict of tensors"
    with pytest.raises(TypeError, match=f"^{re.escape(expected)}$"):
        SamParts(arch="tiny", checkpoint=str(not_a_state))


def test_sam_architecture_errors():
    with pytest.raises(ValueError, match="unknown SAM architecture 'vit_x'"):
        sam_arch("vit_x")
    with pytest.raises(ValueError, match="unknown SAM architecture keys"):
        sam_arch(dict(base="vit_b", depthh=3))
    expected = "SAM architecture is missing ['depth'] (or give base='vit_b')"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        sam_arch(dict(embed_dim=32, num_heads=2, global_attn_indexes=(1,), image_size=128))
    assert sam_arch("vit_l")["embed_dim"] == 1024 and sam_arch("vit_l")["image_size"] == 1024


def test_sam_default_and_named_architectures():
    """vit_b by default; a dict names its base in messages, or 'custom' without one."""
    with torch.device("meta"):
        default = SamParts()
        based = SamParts(arch=dict(base="tiny", depth=1, global_attn_indexes=(0,)))
        custom = SamParts(arch=sam_arch("tiny"))
    assert (default.arch_name, default.arch) == ("vit_b", sam_arch("vit_b"))
    assert (based.arch_name, based.arch["depth"]) == ("tiny", 1)
    assert (custom.arch_name, custom.arch) == ("custom", sam_arch("tiny"))
    with torch.device("meta"):
        fine = SamParts(arch=dict(base="tiny", patch_size=8))  # an override reaches every part
    assert fine.image_encoder.patch_embed.proj.kernel_size == (8, 8)
    assert fine.prompt_encoder.image_embedding_size == (16, 16)
    assert fine.mask_input_size == (64, 64)
    assert all(type(side) is int for side in fine.mask_input_size)


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
    assert towers.pretrained == str(tmp_path / "siglip") and towers.model_type == "siglip"
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
        # The dropped pooling head leaves the vision tower callable, without a pooled output.
        vision = towers.vision(pixel_values=pixels)
    torch.testing.assert_close(vision.last_hidden_state, hidden)
    assert vision.pooler_output is None
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
    expected = "has no config.json (expected a local Hugging Face folder such as checkpoints/"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        SiglipTowers(pretrained=str(tmp_path / "nowhere"))


def _siglip_config(model_type: str | None = "siglip", text_width: int = 32) -> dict:
    vision = dict(TOWER, image_size=32) if model_type != "siglip2" else dict(TOWER, num_patches=16)
    config = dict(text_config=dict(TEXT, hidden_size=text_width), vision_config=vision)
    return config if model_type is None else dict(config, model_type=model_type)


@pytest.mark.parametrize("model_type", [None, "siglip", "siglip2"])
def test_siglip_from_a_config_is_the_transformers_model(model_type):
    """``config=`` builds the transformers class of the model type (``siglip`` by default) with
    the same random init, and the chosen attention backend."""
    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    config = _siglip_config(model_type)
    torch.manual_seed(4)
    towers = SiglipTowers(config=config, attn_implementation="eager")
    settings = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(4)
    if model_type == "siglip2":
        reference, grid = Siglip2Model(Siglip2Config(**settings)), 4
    else:
        reference, grid = SiglipModel(SiglipConfig(**settings)), 32 // 16
    assert towers.model_type == (model_type or "siglip") and towers.pretrained is None
    assert (towers.grid_size, towers.patch_size, towers.image_size) == (grid, 16, 16 * grid)
    assert towers.vision.config._attn_implementation == "eager"
    ours = dict(towers.named_parameters())
    for key, value in reference.state_dict().items():
        name = key.replace("vision_model.", "vision.").replace("text_model.", "text.")
        if name in ours:
            assert torch.equal(ours[name], value), key
        else:
            assert name.startswith("vision.head.") or "position_ids" in name, key


def test_siglip_arguments_and_folders_are_checked(tmp_path):
    with pytest.raises(ValueError, match="model_type must be one of .*got 'clip'"):
        SiglipTowers(config=dict(_siglip_config(), model_type="clip"))
    for arguments in (dict(), dict(pretrained=str(tmp_path), config=_siglip_config())):
        with pytest.raises(ValueError, match=r"^give exactly one of 'pretrained' \(a folder\)"):
            SiglipTowers(**arguments)
    expected = (
        "^ClipSAM compares text tokens with image patches, so the text and vision widths must"
    )
    with pytest.raises(ValueError, match=expected + " match; this checkpoint has 16 and 32$"):
        SiglipTowers(config=_siglip_config(text_width=16))

    from transformers import CLIPConfig

    CLIPConfig().save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match=r"holds a 'clip' model, expected one of \('siglip'"):
        SiglipTowers(pretrained=str(tmp_path / "clip"))

    _save_siglip(tmp_path / "siglip")
    weights = tmp_path / "siglip" / "model.safetensors"
    state = load_file(weights)
    dropped = sorted(key for key in state if key.startswith("text_model.encoder."))[:10]
    kept = {key: value for key, value in state.items() if key not in dropped}
    save_file({**kept, "extra.weight": torch.zeros(1)}, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as info:
        SiglipTowers(pretrained=str(tmp_path / "siglip"))
    assert str(info.value) == (
        f"SigLIP checkpoint '{tmp_path / 'siglip'}' does not match its config.json: "
        f"10 missing keys: {', '.join(dropped[:8])}; 1 unexpected keys: extra.weight. "
        "The weight files are incomplete or belong to another model."
    )
    wrong_shape = {**state, "text_model.head.weight": torch.zeros(5, 32)}
    save_file(wrong_shape, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError, match="cannot load SigLIP weights from"):
        SiglipTowers(pretrained=str(tmp_path / "siglip"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointMismatchError, match="cannot load SigLIP weights from"):
        SiglipTowers(pretrained=str(tmp_path / "siglip"))


def test_siglip_text_attention_mask_is_passed_only_when_asked(tmp_path):
    reference = _save_siglip(tmp_path / "siglip")
    ids = torch.randint(3, 99, (2, 64))
    mask = torch.ones_like(ids)
    mask[:, 5:] = 0
    for masked in (False, True):
        option = dict(text_attention_mask=True) if masked else {}  # off by default
        towers = SiglipTowers(pretrained=str(tmp_path / "siglip"), **option)
        with torch.no_grad():
            tokens, pooled = towers.eval().encode_text(ids, mask)
            text = reference.text_model(input_ids=ids, attention_mask=mask if masked else None)
        torch.testing.assert_close(tokens, text.last_hidden_state)
        torch.testing.assert_close(pooled, text.pooler_output)


def test_siglip_gradient_checkpointing_keeps_the_gradients():
    """Both towers recompute their layers (non-reentrant, so frozen inputs still pass
    gradients to the layers) and the gradients equal those without checkpointing."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(5)
        option = dict(gradient_checkpointing=True) if checkpointing else {}  # off by default
        towers = SiglipTowers(config=_siglip_config(), **option)
        towers.vision.embeddings.requires_grad_(False)
        towers.text.embeddings.requires_grad_(False)
        generator = torch.Generator().manual_seed(6)
        pixels = torch.randn(2, 3, 32, 32, generator=generator)
        ids = torch.randint(3, 99, (2, 64), generator=generator)
        tokens, pooled = towers.encode_text(ids, torch.ones_like(ids))
        (towers.encode_image(pixels).square().mean() + pooled.square().mean()).backward()
        grads.append({n: p.grad for n, p in towers.named_parameters() if p.requires_grad})
        layers = [*towers.vision.encoder.layers, *towers.text.encoder.layers]
        assert all(layer.gradient_checkpointing == checkpointing for layer in layers)
    layer_grads = {name: grad for name, grad in grads[0].items() if ".encoder.layers." in name}
    assert layer_grads and all(grad is not None for grad in layer_grads.values())
    for name, grad in layer_grads.items():
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_siglip_folder_loads_in_float32_with_the_chosen_attention(tmp_path):
    """A bf16 folder (as hub checkpoints are) loads in fp32; autocast decides the compute type."""
    _save_siglip(tmp_path / "siglip").to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    towers = SiglipTowers(pretrained=str(tmp_path / "bf16"), attn_implementation="eager")
    assert {p.dtype for p in towers.parameters()} == {torch.float32}
    assert towers.vision.config._attn_implementation == "eager"
    assert towers.text.config._attn_implementation == "eager"
    assert load_siglip_model(tmp_path / "bf16").config._attn_implementation == "sdpa"  # default
