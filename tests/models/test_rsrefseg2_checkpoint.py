"""Conversion of RSRefSeg 2 models: a synthetic checkpoint in the published key layout (spec
shared/reference/rsrefseg2.md §5), built at tiny widths from the spec's tables and the referee
libraries' own state dicts (transformers ``SiglipModel``, the ``sam2`` builder's ``SAM2Base``), with
peft names and bf16 storage, converts, loads strictly into the tiny ClipSAM2 and is refused when
keys are unknown, missing or of another shape."""

from __future__ import annotations

import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from aerialseg.apis.trained_weights import load_trained_weights
from aerialseg.models import CheckpointMismatchError
from aerialseg.models.rsrefseg2_checkpoint import (
    convert_rsrefseg2_state,
    expected_state,
    main,
    read_rsrefseg2_state,
)
from tests.models.conftest import REPO, build_model
from tests.models.sam2_tiny import build_reference_sam2
from tests.models.test_clipsam2_prompter import published_prompter_shapes

TINY_CONFIG = REPO / "configs" / "clipsam2" / "rsrefseg2-tiny_aerial-d.py"
RANK = 4  # the tiny config's LoRA rank
# §3.1 LoRA targets (relative to each wrapped module), as regular expressions
SAM2_TARGETS = r"trunk\.blocks\.\d+\.attn\.(qkv|proj)|neck\.convs\.\d\.conv"
VISION_TARGETS = (
    r"encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj|head\.attention\.out_proj|head\.mlp\.fc[12]"
)
TEXT_TARGETS = r"encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj|head"
VIDEO_ONLY = (
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


def tiny_clipsam2_config(assets: dict) -> Config:
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.model.vlm.pretrained = assets["vlm"]
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = assets["data"]
    return cfg


def _peft(prefix: str, state: dict, targets: str) -> dict:
    """``prefix`` + keys, with peft's ``base_layer`` / ``lora_A.default`` names on ``targets``."""
    out = {}
    layers = {
        key.rsplit(".", 1)[0] for key in state if re.fullmatch(targets, key.rsplit(".", 1)[0])
    }
    for key, value in state.items():
        layer, leaf = key.rsplit(".", 1)
        out[f"{prefix}{layer}.base_layer.{leaf}" if layer in layers else prefix + key] = value
    for layer in sorted(layers):
        weight = state[f"{layer}.weight"]
        conv = weight.dim() == 4
        a_shape = (RANK, weight.shape[1], 1, 1) if conv else (RANK, weight.shape[1])
        b_shape = (weight.shape[0], RANK, 1, 1) if conv else (weight.shape[0], RANK)
        out[f"{prefix}{layer}.lora_A.default.weight"] = torch.randn(a_shape)
        out[f"{prefix}{layer}.lora_B.default.weight"] = torch.randn(b_shape)
    return out


def published_tiny_state(assets: dict) -> dict[str, torch.Tensor]:
    """An RSRefSeg 2 state dict at the tiny widths, as the published files store it (bf16)."""
    from transformers import SiglipModel

    torch.manual_seed(3)
    siglip = SiglipModel.from_pretrained(assets["vlm"]).state_dict()
    vision = {
        k[len("vision_model.") :]: v for k, v in siglip.items() if k.startswith("vision_model.")
    }
    text = {k[len("text_model.") :]: v for k, v in siglip.items() if k.startswith("text_model.")}
    assert any(key.startswith("head.") for key in vision)  # the MAP head is in the file
    state = {}
    state.update(_peft("clip_vision_encoder.base_model.model.model.", vision, VISION_TARGETS))
    state.update(_peft("clip_text_encoder.base_model.model.model.", text, TEXT_TARGETS))
    state["clip_text_encoder.base_model.model.logit_scale"] = siglip["logit_scale"]
    state["clip_text_encoder.base_model.model.logit_bias"] = siglip["logit_bias"]

    sam2 = build_reference_sam2(seed=4).state_dict()
    encoder = {
        k[len("image_encoder.") :]: v for k, v in sam2.items() if k.startswith("image_encoder.")
    }
    state.update(_peft("backbone.model.image_encoder.base_model.model.", encoder, SAM2_TARGETS))
    for key, value in sam2.items():
        if key.startswith(("sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")):
            state[f"backbone.model.{key}"] = value
        else:
            assert key.startswith(("image_encoder.",) + VIDEO_ONLY), key

    for key, shape in published_prompter_shapes(32, 32, 16, 16, 8).items():
        state[f"prompter.{key}"] = (
            torch.tensor(5, dtype=torch.long)
            if key.endswith("num_batches_tracked")
            else torch.randn(shape)
        )
    state["prompter.dense_prompt_conv.1.running_var"] = torch.rand(16) + 0.5
    for name in ("logit_scale1", "logit_scale2", "logit_bias1", "logit_bias2"):
        state[f"decode_head.{name}"] = torch.randn(())
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def published(tiny_assets, tmp_path_factory):
    state = published_tiny_state(tiny_assets)
    path = tmp_path_factory.mktemp("rsrefseg2") / "rrsisd.pth"
    torch.save({"state_dict": state}, path)
    return state, path


def test_published_layout_converts_and_loads_strictly(tiny_assets, published, tmp_path):
    state, path = published
    cfg = tiny_clipsam2_config(tiny_assets)
    destination = tmp_path / "converted.pth"
    converted = convert_rsrefseg2_state(read_rsrefseg2_state(path), expected_state(cfg), path)
    assert all(v.dtype in (torch.float32, torch.long) for v in converted.values())
    model = build_model(cfg)
    torch.save({"state_dict": converted}, destination)
    load_trained_weights(model, destination)  # strict: every key, every shape
    vision, text = (
        "clip_vision_encoder.base_model.model.model.",
        "clip_text_encoder.base_model.model.",
    )
    encoder = "backbone.model.image_encoder.base_model.model."
    sam = model.sam
    checks = {
        f"{vision}encoder.layers.0.self_attn.q_proj.base_layer.weight": (
            model.vlm.vision.encoder.layers[0].self_attn.q_proj.base_layer.weight
        ),
        f"{text}model.head.lora_B.default.weight": model.vlm.text.head.lora_B["default"].weight,
        f"{text}logit_bias": model.vlm.logit_bias,
        f"{encoder}neck.convs.2.conv.lora_A.default.weight": (
            sam.image_encoder.neck.convs[2].conv.lora_A["default"].weight
        ),
        f"{encoder}trunk.blocks.1.proj.weight": sam.image_encoder.trunk.blocks[1].proj.weight,
        "backbone.model.no_mem_embed": sam.no_mem_embed,
        "backbone.model.sam_mask_decoder.conv_s1.weight": sam.sam_mask_decoder.conv_s1.weight,
        "prompter.img_pe": model.prompter.img_pe,
        "prompter.dense_prompt_conv.1.running_var": model.prompter.dense_prompt_conv[1].running_var,
        "decode_head.logit_scale2": model.loss_contrastive.logit_scale,
    }
    for published_key, tensor in checks.items():
        assert torch.equal(tensor.detach(), state[published_key].float()), published_key
    assert int(model.prompter.dense_prompt_conv[1].num_batches_tracked) == 5


def test_tool_writes_a_checkpoint_the_config_loads(tiny_assets, published, tmp_path):
    _, path = published
    config = tmp_path / "tiny.py"
    vlm = tiny_assets["vlm"]
    config.write_text(
        f"_base_ = [{str(TINY_CONFIG)!r}]\nmodel = dict(vlm=dict(pretrained={vlm!r}))\n"
    )
    destination = tmp_path / "out" / "converted.pth"
    main([str(path), str(destination), "--config", str(config)])
    saved = torch.load(destination, weights_only=True)
    assert set(saved) == {"state_dict", "meta"} and saved["meta"]["converted_from"] == "rrsisd.pth"
    # the vision MAP head (with its LoRA) and the unused decode-head scalars are dropped
    assert not any(".head." in key and key.startswith("vlm.vision") for key in saved["state_dict"])
    assert "loss_contrastive.logit_bias" in saved["state_dict"]
    model = build_model(tiny_clipsam2_config(tiny_assets))
    load_trained_weights(model, destination)
    assert not list(tmp_path.joinpath("out").glob(".*"))  # no staging file left


def test_bare_dict_and_module_prefix_are_accepted(published, tmp_path):
    state, _ = published
    path = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    assert set(read_rsrefseg2_state(path)) == set(state)
    torch.save({"module": state, "global_steps": 10}, path)  # DeepSpeed model states
    assert set(read_rsrefseg2_state(path)) == set(state)


def test_unknown_missing_and_reshaped_keys_are_refused_with_the_list(tiny_assets, published):
    state, path = published
    expected = expected_state(tiny_clipsam2_config(tiny_assets))
    unknown = dict(state, **{"auxiliary_head.conv.weight": torch.zeros(1)})
    with pytest.raises(
        CheckpointMismatchError,
        match=r"1 keys that belong to no part.*auxiliary_head\.conv\.weight",
    ):
        convert_rsrefseg2_state(unknown, expected, path)
    missing = {k: v for k, v in state.items() if k != "prompter.img_pe"}
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys: prompter\.img_pe"):
        convert_rsrefseg2_state(missing, expected, path)
    reshaped = dict(state, **{"backbone.model.no_mem_embed": torch.zeros(1, 1, 16)})
    with pytest.raises(
        CheckpointMismatchError, match=r"another shape: sam\.no_mem_embed \(checkpoint \(1, 1, 16\)"
    ):
        convert_rsrefseg2_state(reshaped, expected, path)
    torch.save([1, 2], path.parent / "list.pth")
    with pytest.raises(Exception, match="not an RSRefSeg 2 model"):
        read_rsrefseg2_state(path.parent / "list.pth")


SO400M_TOWER = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
)
SIGLIP2_SO400M_16_512 = dict(
    model_type="siglip",
    text_config=dict(SO400M_TOWER, vocab_size=256000, max_position_embeddings=64),
    vision_config=dict(SO400M_TOWER, image_size=512, patch_size=16),
)


def test_real_size_model_has_the_published_element_counts(tmp_path):
    """§5.2's per-prefix element counts of a saved RSRefSeg 2 (SAM 2.1-L, LoRA included), on a
    ClipSAM2-L built from configs/clipsam2/rsrefseg2_rrsisd.py without allocating its weights."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

    from aerialseg.models.tiny import build_tiny_tokenizer

    folder = tmp_path / "processing"  # tokenizer and image statistics only
    build_tiny_tokenizer().save_pretrained(folder)
    SiglipImageProcessor(size=dict(height=512, width=512)).save_pretrained(folder)
    init_default_scope("mmseg")
    cfg = Config.fromfile(str(REPO / "configs" / "clipsam2" / "rsrefseg2_rrsisd.py"))
    cfg.model.vlm = dict(config=SIGLIP2_SO400M_16_512)
    cfg.model.data_preprocessor.vlm_path = str(folder)
    state = expected_state(cfg)

    def count(prefix):
        return sum(v.numel() for k, v in state.items() if k.startswith(prefix))

    assert count("sam.image_encoder.trunk.") == 214_759_728
    assert count("sam.image_encoder.neck.") == 604_928
    assert count("sam.sam_prompt_encoder.") == 6_476
    assert count("sam.sam_mask_decoder.") == 4_215_109
    assert count("sam.no_mem_embed") == 256
    assert count("vlm.text.") == 711_801_072
    assert count("prompter.") == 82_774_465
    # the vision tower without the MAP head and its 3 LoRA adapters, which the port drops
    with torch.device("meta"):
        head = SiglipMultiheadAttentionPoolingHead(SiglipVisionConfig(**SO400M_TOWER))
    head_lora = 16 * (1152 + 1152) + 16 * (1152 + 4304) + 16 * (4304 + 1152)
    assert (
        count("vlm.vision.") == 432_965_568 - sum(p.numel() for p in head.parameters()) - head_lora
    )
    lora = sum(v.numel() for k, v in state.items() if "lora_" in k)
    assert lora == 2_661_376 + 4_018_176 + 4_192_768 - head_lora
