"""ClipSAM's own maths around the towers, on one tiny model per module: post-processing against
mmseg's ``BaseSegmentor.postprocess_result``, the mask IoU and the losses against direct
computations, the no-mask dense prompt against segment-anything's ``PromptEncoder``, what is
frozen, and what the checkpoints hold."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.structures import SegDataSample
from torch import nn

from aerialseg.models.mask_loss import ReferringMaskLoss
from aerialseg.models.prompter import ActivationPrompter
from tests.models.conftest import BLUE_BOX, RED_BOX, build_model, square_batch, tiny_config

RED_AND_BLUE = [("the red square", RED_BOX), ("the blue square", BLUE_BOX)]


@pytest.fixture(scope="module")
def model(tiny_assets):
    return build_model(tiny_config(tiny_assets)).eval()


def _samples_with_padding(canvas: int) -> list[SegDataSample]:
    """Three images on a canvas: cropped and resized back, flipped either way, or not."""
    shapes = [
        ((100, 80), (50, 40), None),
        ((128, 96), (64, 96), "horizontal"),
        ((30, 20), (128, 128), "vertical"),
    ]
    samples = []
    for (height, width), ori_shape, flip in shapes:
        metainfo = dict(
            img_shape=(height, width),
            ori_shape=ori_shape,
            img_padding_size=(0, canvas - width, 0, canvas - height),
            flip=flip is not None,
        )
        if flip:
            metainfo["flip_direction"] = flip
        samples.append(SegDataSample(metainfo=metainfo))
    return samples


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_postprocess_equals_mmseg(model, threshold, monkeypatch):
    """Crop, un-flip, resize to ``ori_shape``; ours keeps logits and thresholds them at the
    logit of the probability threshold, mmseg thresholds the sigmoid."""
    monkeypatch.setattr(model, "test_cfg", {} if threshold is None else dict(threshold=threshold))
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(3, 1, 128, 128, generator=generator)
    logits[:, :, 20:60, 10:60] = 0  # exactly on the 0.5 threshold: background, as in mmseg
    iou = torch.tensor([[-0.2], [0.4], [1.3]])
    ours = model.postprocess_result(logits.clone(), _samples_with_padding(128), iou)
    referee_self = SimpleNamespace(
        align_corners=False, decode_head=SimpleNamespace(threshold=threshold or 0.5)
    )
    expected = BaseSegmentor.postprocess_result(
        referee_self, logits.clone(), _samples_with_padding(128)
    )
    for mine, theirs in zip(ours, expected):
        torch.testing.assert_close(mine.seg_logits.data.sigmoid(), theirs.seg_logits.data)
        assert mine.pred_sem_seg.data.dtype == torch.uint8
        assert torch.equal(mine.pred_sem_seg.data, theirs.pred_sem_seg.data.to(torch.uint8))
        assert 0 < mine.pred_sem_seg.data.float().mean() < 1
    assert [float(sample.pred_score) for sample in ours] == pytest.approx([0.0, 0.4, 1.0])
    with_channels = _samples_with_padding(128)[:1]
    # (H, W, C) shapes, as some pipelines record them
    with_channels[0].set_metainfo(dict(img_shape=(100, 80, 3), ori_shape=(50, 40, 3)))
    result = model.postprocess_result(logits[:1].clone(), with_channels)[0]
    assert torch.equal(result.seg_logits.data, ours[0].seg_logits.data)
    undirected = _samples_with_padding(128)[1:2]
    del undirected[0].flip_direction  # flipped by RandomFlip's default: horizontally
    result = model.postprocess_result(logits[1:2].clone(), undirected)[0]
    assert torch.equal(result.seg_logits.data, ours[1].seg_logits.data)


def _reference_iou(logits: torch.Tensor, labels: torch.Tensor, ignore: int) -> list[float]:
    ious = []
    for logit, label in zip(logits[:, 0].numpy(), labels.numpy()):
        valid = label != ignore
        predicted, target = (logit > 0) & valid, (label == 1) & valid
        union = np.logical_or(predicted, target).sum()
        ious.append(np.logical_and(predicted, target).sum() / union if union else 1.0)
    return ious


def test_mask_iou_excludes_padding_and_counts_two_empty_masks_as_one(model):
    logits = -torch.ones(3, 1, 4, 4)
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    logits[0, 0, :2, :2] = 1  # 4 predicted, one of them on padding
    logits[0, 0, 3, 3] = 1
    labels[0, :1, :2] = 1  # 6 target pixels, 3 of them predicted
    labels[0, 3, :] = 1
    labels[0, 1, 1] = 255
    labels[1] = 255  # all padding: empty
    logits[1, 0, 0, 0] = 1
    logits[2, 0, 2, 2] = 1  # a prediction, no target
    iou = model.mask_iou(logits, labels)
    expected = _reference_iou(logits, labels, ignore=255)
    assert expected == pytest.approx([3 / 7, 1.0, 0.0])
    torch.testing.assert_close(iou, torch.tensor(expected, dtype=torch.float32))


def test_losses_are_the_configured_losses_of_the_outputs(model, monkeypatch):
    """Mask losses on the canvas logits, the activation loss on the global map resized to the
    labels, and ``loss_iou_weight`` x MSE between SAM's IoU and the IoU of the mask."""
    monkeypatch.setattr(model, "loss_iou_weight", 0.7)
    data = model.data_preprocessor(copy.deepcopy(square_batch(RED_AND_BLUE)), True)
    labels = torch.stack([sample.gt_sem_seg.data[0] for sample in data["data_samples"]]).long()
    labels[0, 100:, :] = 255  # padding below the image
    for sample, label in zip(data["data_samples"], labels):
        sample.gt_sem_seg.data = label[None]
    with torch.no_grad():
        outputs = model._decode_batch(data["inputs"])
        losses = model.loss(**data)
    expected = model.loss_mask(outputs["masks"], labels)
    activation = F.interpolate(
        outputs["activation"], size=labels.shape[-2:], mode="bilinear", align_corners=False
    )
    expected.update(model.loss_activation(activation, labels))
    mask_iou = torch.tensor(_reference_iou(outputs["masks"], labels, ignore=255))
    expected["loss_iou"] = 0.7 * ((outputs["iou"][:, 0] - mask_iou) ** 2).mean()
    expected["mask_iou"] = mask_iou.mean()
    assert losses.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value.float(), msg=key)


def test_predict_without_samples_keeps_the_canvas(model):
    data = model.data_preprocessor(copy.deepcopy(square_batch(RED_AND_BLUE)), False)
    with torch.no_grad():
        results = model.predict(data["inputs"])
        logits = model._forward(data["inputs"])
    for result, expected in zip(results, logits):
        assert result.metainfo["ori_shape"] == result.metainfo["img_shape"] == (128, 128)
        torch.testing.assert_close(result.seg_logits.data, expected)


def test_checkpoints_hold_trained_tensors_and_load_through_wrappers(model):
    """The frozen SigLIP/SAM tensors are left out (unless ``save_frozen_weights``) and are not
    missing when a wrapper (DDP, EMA) loads the state with its own prefix."""
    full = nn.Module.state_dict(model)
    trained = model.state_dict()
    frozen = model.frozen_state_dict_keys()
    assert frozen and set(trained) == set(full) - frozen
    assert all(key.startswith(("vlm.", "sam.")) for key in frozen)
    assert {key.split(".")[0] for key in frozen} == {"vlm", "sam"}
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert "prompter.reduce.conv.weight" in trained and "vlm.logit_scale" in frozen
    model.save_frozen_weights = True
    try:
        assert model.state_dict().keys() == full.keys()
    finally:
        model.save_frozen_weights = False

    kept = model.state_dict(keep_vars=True)["prompter.reduce.conv.weight"]
    assert kept is model.prompter.reduce.conv.weight  # the parameter itself, as torch gives it
    assert not trained["prompter.reduce.conv.weight"].requires_grad  # detached by default
    wrapper = nn.ModuleDict(dict(module=model))
    assert wrapper.state_dict().keys() == {f"module.{key}" for key in trained}
    result = wrapper.load_state_dict({f"module.{k}": v for k, v in trained.items()}, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    incomplete = {f"module.{k}": v for k, v in trained.items() if not k.startswith("prompter.")}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*module\.prompter\."):
        wrapper.load_state_dict(incomplete, strict=True)


def test_without_dense_prompt_sam_gets_its_no_mask_embedding(tiny_assets):
    """``dense_prompt=False``: the decoder gets segment-anything's own no-mask embedding (its
    ``PromptEncoder`` without masks); the mask path and, with ``loss_iou_weight=0``, the IoU head
    are frozen even when their modules are named trainable."""
    cfg = tiny_config(tiny_assets)
    cfg.model.update(
        dense_prompt=False,
        loss_iou_weight=0,
        trainable=["prompter", "sam.prompt_encoder", "sam.mask_decoder"],
        save_frozen_weights=True,
    )
    cfg.model.lora.vlm_text = None  # a tower without LoRA
    model = build_model(cfg).eval()
    assert model.state_dict().keys() == nn.Module.state_dict(model).keys()  # frozen ones too
    assert not any("lora_" in name for name, _ in model.vlm.text.named_parameters())
    assert any("lora_" in name for name, _ in model.vlm.vision.named_parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "sam.prompt_encoder.no_mask_embed.weight" in trainable
    assert "sam.mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in trainable
    for frozen in (
        "sam.prompt_encoder.mask_downscaling.0.weight",
        "sam.mask_decoder.iou_prediction_head.layers.0.weight",
        "sam.prompt_encoder.point_embeddings.0.weight",
        "sam.mask_decoder.output_hypernetworks_mlps.3.layers.0.weight",
    ):
        assert frozen not in trainable, frozen
    summary = model.parameter_summary()
    parts = dict(
        sam_image_encoder=model.sam.image_encoder,
        sam_prompt_encoder=model.sam.prompt_encoder,
        sam_mask_decoder=model.sam.mask_decoder,
        vlm_vision=model.vlm.vision,
        vlm_text=model.vlm.text,
        prompter=model.prompter,
    )
    for name, part in parts.items():
        counts = [p.numel() for p in part.parameters()]
        trained = [p.numel() for p in part.parameters() if p.requires_grad]
        assert summary[name] == (sum(trained), sum(counts)), name
    assert summary["sam_prompt_encoder"][0] == model.sam.embed_dim  # only the no-mask embedding
    lines = model.parameter_summary_lines()
    assert lines[0] == "ClipSAM parameters (trainable / total):"
    for line, (name, (trained_count, total)) in zip(lines[1:], summary.items()):
        # an aligned table: name in 20 columns, counts right-aligned in 13 with thousands commas
        assert line == f"  {name.ljust(20)} {trained_count:>13,} / {total:>13,}"
    assert len(lines) == len(summary) + 1 and list(summary)[-2:] == ["lora", "all"]

    seen = []
    handle = model.sam.mask_decoder.register_forward_hook(
        lambda _, args, kwargs, output: seen.append((kwargs, output)), with_kwargs=True
    )
    data = model.data_preprocessor(copy.deepcopy(square_batch(RED_AND_BLUE)), False)
    with torch.no_grad():
        logits = model._forward(data["inputs"])
        _, no_mask = model.sam.prompt_encoder(points=None, boxes=None, masks=None)
    handle.remove()
    assert len(seen) == 2
    for index, (kwargs, (masks, _)) in enumerate(seen):
        torch.testing.assert_close(kwargs["dense_prompt_embeddings"], no_mask)
        # the decoder's 4h x 4w logits, resized bilinearly to the input canvas
        expected = F.interpolate(masks, size=(128, 128), mode="bilinear", align_corners=False)
        torch.testing.assert_close(logits[index : index + 1], expected)


def test_construction_errors_name_the_problem(tiny_assets):
    cfg = tiny_config(tiny_assets)
    no_folder = copy.deepcopy(cfg)
    no_folder.model.vlm = dict(config=dict(text_config={}, vision_config={}))
    with pytest.raises(
        ValueError, match=r"^data_preprocessor\.vlm_path is needed when vlm has no 'pretrained'$"
    ):
        build_model(no_folder)
    default_preprocessor = copy.deepcopy(cfg)
    default_preprocessor.model.data_preprocessor = None  # ReferringDataPreProcessor for SAM's 1024
    with pytest.raises(ValueError, match="data_preprocessor.size 1024 must equal SAM's image size"):
        build_model(default_preprocessor)
    unknown = copy.deepcopy(cfg)
    unknown.model.lora = dict(vlm_vision=dict(r=2), sam_decoder=dict(r=2))
    with pytest.raises(ValueError, match=r"unknown LoRA towers \['sam_decoder'\]; expected"):
        build_model(unknown)
    other_size = copy.deepcopy(cfg)
    tower = dict(hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    other_size.model.vlm = dict(
        config=dict(
            text_config=dict(tower),
            vision_config=dict(tower, image_size=32),
        )
    )
    other_size.model.data_preprocessor.vlm_path = tiny_assets["vlm"]
    with pytest.raises(ValueError, match="resizes to 64, but the vision tower expects 32"):
        build_model(other_size)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_minimal_config_gets_the_defaults_and_keeps_its_own_settings(tiny_assets):
    """Left out of the config: the global map as SAM's dense prompt, the CE 0.9 + Dice 0.1 mask
    losses, the IoU loss at weight 1, no activation loss, the 0.5 threshold and checkpoints
    without frozen tensors. Given: the prompter config and ``init_cfg`` (applied by mmengine's
    ``init_weights``). The parameter table goes to the current mmengine logger at INFO."""
    cfg = tiny_config(tiny_assets)
    for key in (
        "dense_prompt",
        "loss_mask",
        "loss_iou_weight",
        "loss_activation",
        "save_frozen_weights",
        "test_cfg",
    ):
        cfg.model.pop(key, None)
    cfg.model.init_cfg = dict(type="Constant", val=0.25, layer="GroupNorm")
    logged = _Records()
    logger = MMLogger.get_current_instance()
    logger.addHandler(logged)
    try:
        model = build_model(cfg).eval()
    finally:
        logger.removeHandler(logged)
    table = model.parameter_summary_lines()
    info = [record.getMessage() for record in logged.records if record.levelno == logging.INFO]
    start = info.index(table[0])
    assert info[start : start + len(table)] == table

    configured = ActivationPrompter(model.vlm.width, model.sam.embed_dim, **cfg.model.prompter)
    assert repr(model.prompter) == repr(configured)  # one downsampling block, 8 groups
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "sam.prompt_encoder.mask_downscaling.0.weight" in trainable  # the dense prompt path
    assert "sam.prompt_encoder.no_mask_embed.weight" not in trainable
    saved = model.state_dict()
    assert "vlm.logit_scale" not in saved and "prompter.reduce.conv.weight" in saved

    data = model.data_preprocessor(copy.deepcopy(square_batch(RED_AND_BLUE)), True)
    labels = torch.stack([sample.gt_sem_seg.data[0] for sample in data["data_samples"]]).long()
    with torch.no_grad():
        outputs = model._decode_batch(data["inputs"])
        losses = model.loss(**copy.deepcopy(data))
        predictions = model.predict(data["inputs"], data["data_samples"])
    documented = [
        dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=0.9, avg_non_ignore=True),
        dict(type="DiceLoss", use_sigmoid=True, naive_dice=True, eps=1.0, loss_weight=0.1),
    ]
    expected = ReferringMaskLoss(documented)(outputs["masks"], labels)
    mask_iou = torch.tensor(_reference_iou(outputs["masks"], labels, ignore=255))
    expected["loss_iou"] = ((outputs["iou"][:, 0] - mask_iou) ** 2).mean()
    expected["mask_iou"] = mask_iou.mean()
    assert losses.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value.float(), msg=key)
    for prediction in predictions:
        logits = prediction.seg_logits.data
        assert torch.equal(prediction.pred_sem_seg.data, (logits > 0).to(torch.uint8))

    model.init_weights()
    norms = [m for m in model.prompter.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(bool((norm.weight == 0.25).all()) for norm in norms)
