"""ClipSAM on the tiny config: forward/backward, predictions, LoRA counts, checkpoints, AMP."""

from __future__ import annotations

import copy
import math
from unittest import mock

import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.runner.checkpoint import load_checkpoint, save_checkpoint
from torch import nn

from aerialseg.models import CheckpointMismatchError
from tests.models.conftest import BLUE_BOX, RED_BOX, build_model, square_batch

RED_AND_BLUE = [("the red square", RED_BOX), ("the blue square", BLUE_BOX)]


def _step_grads(model, batch):
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    losses = model.loss(**data)
    sum(value for key, value in losses.items() if "loss" in key).backward()
    return losses


def test_forward_backward_reaches_exactly_the_trainable_parameters(tiny_cfg):
    model = build_model(tiny_cfg)
    losses = _step_grads(model, square_batch(RED_AND_BLUE))
    assert set(losses) == {"loss_ce", "loss_dice", "loss_iou", "loss_activation", "mask_iou"}
    assert all(torch.isfinite(value) for value in losses.values())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:  # DDP without find_unused_parameters needs every one
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    # frozen base weights of the towers, trainable LoRA next to them
    assert not model.sam.image_encoder.blocks[0].attn.qkv.base_layer.weight.requires_grad
    assert model.vlm.text.head.lora_A["default"].weight.requires_grad
    assert not model.vlm.logit_scale.requires_grad


def test_text_is_padded_to_fixed_length_so_features_ignore_the_batch(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    pre = model.data_preprocessor
    alone_ids, alone_mask = pre.tokenize(["The Red Square"])
    batch_ids, batch_mask = pre.tokenize(
        ["the red square", "the very long blue square in the bottom right corner of the image"]
    )
    assert alone_ids.shape == (1, 64) and batch_ids.shape == (2, 64)
    assert torch.equal(alone_ids[0], batch_ids[0])  # lower-cased, same padding
    assert alone_mask.sum() == 4  # three words + </s>
    with torch.no_grad():
        _, pooled_alone = model.encode_text(alone_ids, alone_mask)
        _, pooled_batch = model.encode_text(batch_ids, batch_mask)
    torch.testing.assert_close(pooled_alone[0], pooled_batch[0])
    with pytest.raises(ValueError, match="expression 1 is empty"):
        pre.tokenize(["fine", "  "])


def test_predict_returns_masks_at_original_size_through_the_padding(tiny_cfg):
    model = build_model(tiny_cfg).eval()
    batch = square_batch(RED_AND_BLUE, image_hw=(96, 128))
    for sample in batch["data_samples"]:
        sample.set_metainfo(dict(ori_shape=(192, 256)))  # the pipeline had halved the image
    with torch.no_grad():
        results = model.test_step(batch)
        canvas = model._forward(model.data_preprocessor(copy.deepcopy(batch), False)["inputs"])
    assert canvas.shape == (2, 1, 128, 128)
    for result, logits in zip(results, canvas):
        assert result.seg_logits.data.shape == (1, 192, 256)
        assert result.pred_sem_seg.data.dtype == torch.uint8
        assert set(result.pred_sem_seg.data.unique().tolist()) <= {0, 1}
        assert torch.equal(result.pred_sem_seg.data, (result.seg_logits.data > 0).to(torch.uint8))
        # crop the 96 valid rows of the 128 x 128 canvas, then resize x2
        expected = torch.nn.functional.interpolate(
            logits[None, :, :96], size=(192, 256), mode="bilinear", align_corners=False
        )[0]
        torch.testing.assert_close(result.seg_logits.data, expected)
        assert 0 <= float(result.pred_score) <= 1
    empty = square_batch([("", RED_BOX)])
    with pytest.raises(ValueError, match="empty expression"):
        model.test_step(empty)


def _lora_count(module: nn.Module, targets: list[str], rank: int) -> int:
    total = 0
    for name, layer in module.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(layer, nn.Linear):
            total += rank * (layer.in_features + layer.out_features)
        else:
            assert isinstance(layer, nn.Conv2d), name
            kernel = math.prod(layer.kernel_size)
            total += rank * layer.in_channels * kernel + layer.out_channels * rank
    return total


@pytest.mark.parametrize("rank", [2, 8])
def test_lora_trainable_counts_match_the_config(tiny_cfg, rank):
    plain_cfg = copy.deepcopy(tiny_cfg)
    plain_cfg.model.lora = None
    plain = build_model(plain_cfg)
    for tower in tiny_cfg.model.lora.values():
        tower.r = rank
    model = build_model(tiny_cfg)
    lora = tiny_cfg.model.lora
    expected_lora = (
        _lora_count(plain.sam.image_encoder, lora.sam_image_encoder.target_modules, rank)
        + _lora_count(plain.vlm.vision, lora.vlm_vision.target_modules, rank)
        + _lora_count(plain.vlm.text, lora.vlm_text.target_modules, rank)
    )
    summary = model.parameter_summary()
    assert summary["lora"] == (expected_lora, expected_lora)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    decoder, prompt = plain.sam.mask_decoder, plain.sam.prompt_encoder
    unused = (
        sum(count(mlp) for mlp in decoder.output_hypernetworks_mlps[1:])
        + count(prompt.point_embeddings)
        + count(prompt.not_a_point_embed)
        + count(prompt.no_mask_embed)
    )
    full = count(plain.prompter) + count(decoder) + count(prompt) - unused
    assert summary["all"][0] == expected_lora + full
    assert summary["all"][1] == count(plain) + expected_lora
    assert summary["sam_image_encoder"][0] == _lora_count(
        plain.sam.image_encoder, lora.sam_image_encoder.target_modules, rank
    )


def test_trainable_set_and_lora_targets_are_checked(tiny_cfg):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.trainable = ["vlm.logit_scale", "prompter"]  # a parameter, then a module
    model = build_model(cfg)
    assert model.vlm.logit_scale.requires_grad and not model.vlm.logit_bias.requires_grad
    assert all(p.requires_grad for p in model.prompter.parameters())
    assert not any(p.requires_grad for p in model.sam.mask_decoder.parameters())
    assert model.trainable == ("vlm.logit_scale", "prompter")

    cfg.model.trainable = ["sam.mask_decoderr"]
    with pytest.raises(ValueError) as refused:
        build_model(cfg)
    assert str(refused.value) == (
        "'trainable' names 'sam.mask_decoderr', which is neither a sub-module nor a parameter of "
        "ClipSAM (e.g. 'prompter', 'vlm.logit_scale')"
    )
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.loss_activation = [dict(type="CrossEntropyLoss", use_sigmoid=True)]
    with pytest.raises(ValueError, match=r"reuses the loss names \['loss_ce'\]"):
        build_model(cfg)
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.lora.vlm_text.target_modules = ["self_attn.q_proj", "o_proj"]
    with pytest.raises(ValueError, match=r"LoRA targets \['o_proj'\] match no layer of vlm_text"):
        build_model(cfg)


def test_checkpoint_round_trip_keeps_only_trained_tensors(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg)
    optimizer = OptimWrapper(torch.optim.AdamW(p for p in model.parameters() if p.requires_grad))
    for _ in range(2):
        model.train_step(copy.deepcopy(square_batch(RED_AND_BLUE)), optimizer)
    path = tmp_path / "iter_2.pth"
    save_checkpoint(model.state_dict(), str(path))
    saved = torch.load(path, weights_only=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(saved)
    assert not any(
        key.startswith("sam.image_encoder.blocks.0.attn.qkv.base_layer") for key in saved
    )
    assert all(key.startswith("prompter.") or key in trainable for key in saved)

    fresh = build_model(tiny_cfg).eval()
    load_checkpoint(fresh, str(path), strict=True)
    model.eval()
    batch = square_batch(RED_AND_BLUE)
    with torch.no_grad():
        expected = model.test_step(copy.deepcopy(batch))
        loaded = fresh.test_step(copy.deepcopy(batch))
    for a, b in zip(expected, loaded):
        assert torch.equal(a.seg_logits.data, b.seg_logits.data)

    saved["prompter.unknown"] = torch.zeros(1)
    torch.save(saved, path)
    with pytest.raises(RuntimeError, match="unexpected key in source state_dict: prompter.unknown"):
        load_checkpoint(fresh, str(path), strict=True)


def test_bf16_autocast_on_cpu_trains(tiny_cfg):
    model = build_model(tiny_cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = _step_grads(model, square_batch(RED_AND_BLUE))
    assert all(torch.isfinite(v) for v in losses.values())
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(
        g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads
    )


def test_amp_optim_wrapper_clips_unscaled_gradients(tiny_cfg):
    """mmengine's AmpOptimWrapper (as configured) unscales before clipping. It refuses to start
    without a GPU, so the check is bypassed and a CPU GradScaler with a large scale is used."""
    from mmengine.optim import AmpOptimWrapper

    model = build_model(tiny_cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    with mock.patch(
        "mmengine.optim.optimizer.amp_optimizer_wrapper.is_cuda_available", lambda: True
    ):
        wrapper = AmpOptimWrapper(
            optimizer=torch.optim.SGD(params, lr=0.0),
            dtype="bfloat16",
            clip_grad=dict(max_norm=1e-3),
        )
    wrapper.loss_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    data = model.data_preprocessor(copy.deepcopy(square_batch(RED_AND_BLUE)), True)
    with wrapper.optim_context(model):
        losses = model.loss(**data)
    wrapper.backward(sum(value for key, value in losses.items() if "loss" in key))
    wrapper.step()  # unscale, clip, (zero-lr) step; the gradients stay for inspection
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    # clipped to max_norm in real units; clipping the scaled gradients would leave ~1e-3 / 65536
    assert norm.item() == pytest.approx(1e-3, rel=1e-2)


def test_mismatched_preprocessor_size_is_refused(tiny_cfg):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.data_preprocessor.size = 256
    with pytest.raises(ValueError, match="data_preprocessor.size 256 must equal SAM's image size"):
        build_model(cfg)
    with pytest.raises(CheckpointMismatchError):
        sam = copy.deepcopy(tiny_cfg)
        sam.model.sam.arch = dict(base="tiny", depth=1, global_attn_indexes=(0,))
        build_model(sam)
