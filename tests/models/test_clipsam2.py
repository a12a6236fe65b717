"""ClipSAM2 on the tiny RSRefSeg 2 config: pre-processing chain, parity vs default text mode,
training step, and the import path end to end (convert -> tools/test.py -> aerialseg predict)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aerialseg.models.sam2 import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from tests.models.conftest import BLUE_BOX, RED_BOX, REPO, build_model, square_batch
from tests.models.test_rsrefseg2_checkpoint import (
    TINY_CONFIG,
    published_tiny_state,
    tiny_clipsam2_config,
)

SHORT, LONG = "the red square", "the blue square in the bottom right corner of the image"


@pytest.fixture(scope="module")
def converted(tiny_assets, tmp_path_factory):
    """The tiny published-layout model, converted by the tool, and a config file that loads it."""
    from aerialseg.models.rsrefseg2_checkpoint import main

    folder = tmp_path_factory.mktemp("clipsam2")
    source = folder / "rrsisd.pth"
    torch.save({"state_dict": published_tiny_state(tiny_assets)}, source)
    config = folder / "rsrefseg2_tiny.py"
    data = tiny_assets["data"]
    config.write_text(
        f"_base_ = [{str(TINY_CONFIG)!r}]\n"
        f"model = dict(vlm=dict(pretrained={tiny_assets['vlm']!r}))\n"
        f"train_dataloader = dict(dataset=dict(data_root={data!r}))\n"
        f"val_dataloader = dict(dataset=dict(data_root={data!r}))\n"
        f"test_dataloader = dict(dataset=dict(data_root={data!r}))\n"
    )
    checkpoint = folder / "converted.pth"
    main([str(source), str(checkpoint), "--config", str(config)])
    return dict(config=config, checkpoint=checkpoint)


def _loaded_model(tiny_assets, converted, parity=True):
    from aerialseg.apis.trained_weights import load_trained_weights

    cfg = tiny_clipsam2_config(tiny_assets)
    cfg.model.data_preprocessor.parity = parity
    model = build_model(cfg)
    load_trained_weights(model, converted["checkpoint"])
    return model.eval()


def test_image_chain_is_rsrefseg2s(tiny_assets):
    model = build_model(tiny_clipsam2_config(tiny_assets))
    pre = model.data_preprocessor
    batch = square_batch([(SHORT, RED_BOX)], image_hw=(96, 128))
    data = pre(copy.deepcopy(batch), False)
    inputs = data["inputs"]
    rgb = batch["inputs"][0][[2, 1, 0]].double() / 255
    canvas = torch.zeros(3, 128, 128, dtype=torch.float64)  # padded bottom with 0
    canvas[:, :96] = rgb
    mean = torch.tensor(SAM2_PIXEL_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(SAM2_PIXEL_STD, dtype=torch.float64).view(3, 1, 1)
    # SAM 2: ImageNet statistics on [0, 1], padding normalised too (not reset to 0)
    torch.testing.assert_close(inputs["sam_pixels"][0].double(), (canvas - mean) / std)
    # SigLIP: 0.5/0.5 first, then 128 -> 64 bilinear without antialias = a 2 x 2 mean
    vlm = F.avg_pool2d(((canvas - 0.5) / 0.5)[None], 2)[0]
    torch.testing.assert_close(inputs["vlm_pixels"][0].double(), vlm)
    assert torch.all(inputs["vlm_pixels"][0, :, 48:] == -1)


@pytest.mark.parametrize(
    "name", ["rsrefseg2_rrsisd", "rsrefseg2_refsegrs", "rsrefseg2_risbench", "clipsam2-l_risbench"]
)
def test_config_pipelines_resize_like_rsrefseg2(name):
    """§1.1: keep-ratio resize of the uint8 image with cv2 INTER_LINEAR (mmcv rounding of the new
    size), in every loader of the import and training configs; a Pillow resize differs."""
    import cv2
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(REPO / "configs" / "clipsam2" / f"{name}.py"))
    image = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    # scale 1024 / 400: int(400 * 2.56 + 0.5) x int(300 * 2.56 + 0.5)
    expected = cv2.resize(image, (1024, 768), interpolation=cv2.INTER_LINEAR)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        pipeline = cfg[loader].dataset.pipeline
        (resize,) = [TRANSFORMS.build(t) for t in pipeline if t["type"] == "ReferringResize"]
        results = resize(dict(img=image.copy(), img_shape=(300, 400), ori_shape=(300, 400)))
        np.testing.assert_array_equal(results["img"], expected, err_msg=loader)


def test_parity_pads_to_the_batch_default_to_64(tiny_assets, converted):
    parity = _loaded_model(tiny_assets, converted, parity=True)
    default = _loaded_model(tiny_assets, converted, parity=False)
    # SigLIP 2's tokenizer returns no attention mask, so RSRefSeg 2's text tower never gets one
    parity.data_preprocessor.tokenizer.model_input_names = ["input_ids"]
    alone, _ = parity.data_preprocessor.tokenize([SHORT])
    pair, _ = parity.data_preprocessor.tokenize([SHORT, LONG])
    assert alone.shape[1] < pair.shape[1] < 64
    assert default.data_preprocessor.tokenize([SHORT])[0].shape == (1, 64)
    with torch.no_grad():
        _, pooled_alone = parity.encode_text(alone, None)
        _, pooled_pair = parity.encode_text(pair, None)
        # RSRefSeg 2's quirk: the short text's pooled vector is read at a padding position
        assert not torch.allclose(pooled_alone[0], pooled_pair[0])
        padded, _ = default.data_preprocessor.tokenize([SHORT])
        _, pooled_default = default.encode_text(padded[:, : pair.shape[1]], None)
        torch.testing.assert_close(pooled_pair[0], pooled_default[0])
        # a tokenizer that returns a mask: RSRefSeg 2 passes it on, and so does parity mode
        parity.data_preprocessor.tokenizer.model_input_names = ["input_ids", "attention_mask"]
        ids, mask = parity.data_preprocessor.tokenize([SHORT, LONG])
        _, pooled_masked = parity.encode_text(ids, mask)
        expected = parity.vlm.text(input_ids=ids, attention_mask=mask).pooler_output
        torch.testing.assert_close(pooled_masked, expected)
        assert not torch.allclose(pooled_masked[0], pooled_pair[0])
    # default mode: a sample's prediction does not depend on the rest of the batch
    with torch.no_grad():
        alone_out = default.test_step(square_batch([(SHORT, RED_BOX)]))
        pair_out = default.test_step(square_batch([(SHORT, RED_BOX), (LONG, BLUE_BOX)]))
    torch.testing.assert_close(alone_out[0].seg_logits.data, pair_out[0].seg_logits.data)


def test_training_step_reaches_the_rsrefseg2_trainable_set(tiny_assets):
    model = build_model(tiny_clipsam2_config(tiny_assets))
    model.train()
    data = model.data_preprocessor(square_batch([(SHORT, RED_BOX), (LONG, BLUE_BOX)]), True)
    losses = model.loss(**data)
    assert set(losses) == {
        "loss_ce",
        "loss_dice",
        "loss_query_decorrelation",
        "loss_query_contrastive",
        "mask_iou",
    }
    sum(value for key, value in losses.items() if key.startswith("loss")).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == parameter.requires_grad, name
    assert model.sam.no_mem_embed.requires_grad and model.vlm.logit_scale.requires_grad
    assert not model.sam.sam_mask_decoder.iou_prediction_head.layers[0].weight.requires_grad
    assert not model.sam.image_encoder.trunk.blocks[0].attn.qkv.base_layer.weight.requires_grad
    assert model.sam.image_encoder.trunk.blocks[0].attn.qkv.lora_A["default"].weight.requires_grad
    # decorrelation: cos² of the mean queries, by hand
    outputs = model._decode_batch(data["inputs"])
    # §4.1 mask losses by hand on the padded canvas (rows 96-127 are padding, label 255):
    # 5 x BCE with padding weighted 0 but averaged over all pixels, 5 x V-Net Dice (eps 1e-3)
    # over the real pixels (ClipSAM2 leaves padding out of the Dice sums, see docs/model.md)
    labels = torch.stack([sample.gt_sem_seg.data[0] for sample in data["data_samples"]]).long()
    valid, target = (labels != 255).float(), (labels == 1).float()
    assert 0 < valid.mean() < 1
    logits = outputs["masks"][:, 0]
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * valid
    torch.testing.assert_close(losses["loss_ce"], 5 * bce.mean())
    p = torch.sigmoid(logits) * valid
    dice = 1 - 2 * (p * target).sum((1, 2)) / (
        (p**2).sum((1, 2)) + 1e-3 + target.sum((1, 2)) + 1e-3
    )
    torch.testing.assert_close(losses["loss_dice"], 5 * dice.mean())
    q1, q2 = outputs["queries1"].mean(1), outputs["queries2"].mean(1)
    cos = (q1 * q2).sum(-1) / (q1.norm(dim=-1) * q2.norm(dim=-1))
    torch.testing.assert_close(losses["loss_query_decorrelation"], 0.5 * (cos**2).mean())


def test_tools_test_and_predict_run_on_the_converted_model(tiny_assets, converted, tmp_path):
    from aerialseg.cli import main as cli_main
    from aerialseg.evaluation import test_main

    results = test_main(
        [str(converted["config"]), str(converted["checkpoint"]), "--work-dir", str(tmp_path / "t")]
    )
    metrics = results[0]["metrics"]
    # the table scores the converted model's own predictions (same batches of 4: parity mode
    # depends on them), here scored by hand under RSRefSeg 2's rules (mean of per-sample IoU)
    from mmengine.config import Config
    from mmengine.runner import Runner

    model = _loaded_model(tiny_assets, converted)
    areas = []  # (intersection, union) per sample
    with torch.no_grad():
        for batch in Runner.build_dataloader(Config.fromfile(converted["config"]).test_dataloader):
            for sample in model.test_step(batch):
                predicted = sample.pred_sem_seg.data[0].bool()
                target = sample.gt_sem_seg.data[0] == 1
                areas.append((int((predicted & target).sum()), int((predicted | target).sum())))
    assert metrics["N"] == len(areas)
    mean_iou = 100 * float(np.mean([inter / union for inter, union in areas]))
    overall_iou = 100 * sum(inter for inter, _ in areas) / sum(union for _, union in areas)
    assert 0 < mean_iou < 100, "a trivial score compares nothing"
    assert metrics["mIoU"] == pytest.approx(mean_iou, rel=1e-6)
    assert metrics["oIoU"] == pytest.approx(overall_iou, rel=1e-6)

    image = np.zeros((100, 128, 3), dtype=np.uint8)
    image[10:60, 20:70] = (220, 30, 30)
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "predicted"
    code = cli_main(
        [
            "predict",
            str(tmp_path / "scene.png"),
            "-e",
            SHORT,
            "--config",
            str(converted["config"]),
            "--checkpoint",
            str(converted["checkpoint"]),
            "--out-dir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    written = sorted(p.name for p in out.rglob("*.png"))
    assert written, "no mask written"
    # the CLI's mask is the model's own prediction on the same image
    model = _loaded_model(tiny_assets, converted)
    bgr = torch.from_numpy(image[:, :, ::-1].transpose(2, 0, 1).copy())
    from mmseg.structures import SegDataSample

    sample = SegDataSample(metainfo=dict(text=SHORT, ori_shape=(100, 128), img_shape=(100, 128)))
    with torch.no_grad():
        expected = model.test_step(dict(inputs=[bgr], data_samples=[sample]))[0]
    masks = [p for p in out.rglob("*.png") if "mask" in p.name]
    assert masks, written
    predicted = np.array(Image.open(masks[0])) > 0
    assert 0 < predicted.sum() < predicted.size, "a trivial mask compares nothing"
    assert np.array_equal(predicted, expected.pred_sem_seg.data[0].numpy().astype(bool))


def test_contrastive_loss_equals_symmetric_infonce_by_hand():
    from aerialseg.models.sam2_losses import QueryImageContrastiveLoss
    from tests.models.test_clipsam2_prompter import _bilinear_matrix

    torch.manual_seed(0)
    loss = QueryImageContrastiveLoss().double()
    with torch.no_grad():
        loss.logit_scale.fill_(1.2)
        loss.logit_bias.fill_(-0.3)
    patches = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    queries2 = torch.randn(3, 3, 5, dtype=torch.float64)
    labels = torch.zeros(3, 16, 16, dtype=torch.long)
    labels[0, :8, :8] = 1
    labels[1, 4:, 6:] = 1
    labels[2, 12:, :] = 255  # padding counts as target, as in RSRefSeg 2
    labels[2, :3, :3] = 1
    m = _bilinear_matrix(16, 4)
    images, texts = [], []
    for b in range(3):
        small = m @ labels[b].double() @ m.T  # align_corners=True resize to the patch grid
        masked = patches[b] * (small > 0.5)
        vector = masked.mean(dim=(1, 2))
        images.append(vector / vector.norm())
        text = queries2[b].mean(0)
        texts.append(text / text.norm())
    logits = torch.stack(
        [torch.stack([math.exp(1.2) * (i @ t) - 0.3 for t in texts]) for i in images]
    )
    rows = -sum(torch.log_softmax(logits[r], 0)[r] for r in range(3)) / 3
    cols = -sum(torch.log_softmax(logits[:, c], 0)[c] for c in range(3)) / 3
    torch.testing.assert_close(loss(patches, queries2, labels), (rows + cols) / 2)
