"""ReferringDataPreProcessor beyond the SigLIP/SAM input referees: the training path (masks padded
with the image), the test path's padding info, channel order, the processor's resampling filter,
and every input it refuses. SAM's side is checked against ``segment_anything.Sam.preprocess``."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from segment_anything.modeling import Sam

from aerialseg.models.data_preprocessor import ReferringDataPreProcessor, load_vlm_processing

CANVAS, VLM_SIZE = 40, 16


@pytest.fixture(scope="module")
def processing_folders(tmp_path_factory) -> dict:
    """Tokenizer + image-processor folders (no weights: the preprocessor reads only these), one
    per PIL resampling filter (0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic)."""
    from transformers import SiglipImageProcessor

    from aerialseg.models.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    root = tmp_path_factory.mktemp("processing")
    folders = {}
    for resample in (0, 1, 2, 3):
        folder = root / f"resample{resample}"
        tokenizer.save_pretrained(folder)
        SiglipImageProcessor(
            size=dict(height=VLM_SIZE, width=VLM_SIZE),
            resample=resample,
            image_mean=[0.5, 0.25, 0.75],
            image_std=[0.5, 0.2, 0.4],
            rescale_factor=1 / 200,
        ).save_pretrained(folder)
        folders[resample] = str(folder)
    return folders


def _sample(text="the red car", height=30, width=24, mask_value=None, **metainfo) -> dict:
    sample = SegDataSample(metainfo=dict(text=text, img_path="scene.png", **metainfo))
    if mask_value is not None:
        mask = torch.full((1, height, width), mask_value, dtype=torch.uint8)
        mask[0, 0, 0] = 0
        sample.gt_sem_seg = PixelData(data=mask)
    return sample


def _image(height=30, width=24, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def _sam_preprocess(rgb: torch.Tensor) -> torch.Tensor:
    """segment_anything's own normalise-and-pad, on its default statistics."""
    defaults = inspect.signature(Sam.__init__).parameters
    sam = SimpleNamespace(
        pixel_mean=torch.tensor(defaults["pixel_mean"].default).view(-1, 1, 1),
        pixel_std=torch.tensor(defaults["pixel_std"].default).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=CANVAS),
    )
    return Sam.preprocess(sam, rgb.float()[None])[0]


def test_processor_statistics_and_filters_are_read_from_the_folder(processing_folders):
    processing = load_vlm_processing(processing_folders[3])
    assert processing["image_size"] == VLM_SIZE and processing["rescale"] == pytest.approx(1 / 200)
    assert processing["mean"] == [0.5, 0.25, 0.75] and processing["std"] == [0.5, 0.2, 0.4]
    modes = {r: load_vlm_processing(f)["mode"] for r, f in processing_folders.items()}
    assert modes == {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic"}


def test_defaults_agree_with_sam_siglip_and_mmseg(processing_folders):
    """S = SAM's input side, L = SigLIP's text positions, the mask padding = mmseg's ignore label;
    the statistics come from the folder, so checkpoints do not hold them."""
    from mmseg.utils import stack_batch
    from segment_anything.modeling import ImageEncoderViT
    from transformers import SiglipTextConfig

    pre = ReferringDataPreProcessor(processing_folders[3])
    assert pre.size == inspect.signature(ImageEncoderViT).parameters["img_size"].default == 1024
    assert pre.text_length == SiglipTextConfig().max_position_embeddings == 64
    assert pre.seg_pad_val == inspect.signature(stack_batch).parameters["seg_pad_val"].default
    assert pre.vlm_path == processing_folders[3] and pre.lowercase
    assert pre.state_dict() == {}
    assert dict(pre.named_buffers()).keys() == {"sam_mean", "sam_std", "vlm_mean", "vlm_std"}


def test_training_batch_pads_masks_like_images(processing_folders):
    pre = ReferringDataPreProcessor(
        processing_folders[2], size=CANVAS, seg_pad_val=7, text_length=8
    )
    images = [_image(30, 24, seed=1), _image(40, 17, seed=2)]
    samples = [_sample("a", 30, 24, mask_value=1), _sample("b c", 40, 17, mask_value=1)]
    out = pre(dict(inputs=images, data_samples=samples), True)
    inputs, padded = out["inputs"], out["data_samples"]
    for index, (image, sample) in enumerate(zip(images, padded)):
        height, width = image.shape[1:]
        mask = sample.gt_sem_seg.data[0]
        assert mask.shape == (CANVAS, CANVAS)
        assert (mask[height:] == 7).all() and (mask[:, width:] == 7).all()
        assert mask[0, 0] == 0 and (mask[:height, :width].flatten()[1:] == 1).all()
        # BGR in, RGB out; SAM's statistics; zero padding after normalising, as SAM does.
        expected = _sam_preprocess(image[[2, 1, 0]])
        torch.testing.assert_close(inputs["sam_pixels"][index], expected)
    assert inputs["vlm_pixels"].shape == (2, 3, VLM_SIZE, VLM_SIZE)
    assert inputs["input_ids"].shape == inputs["text_mask"].shape == (2, 8)
    assert inputs["text_mask"].sum(1).tolist() == [2, 3]  # words + </s>


def test_vlm_pixels_use_the_folders_filter_rescale_and_statistics(processing_folders):
    """The torch resize of the canvas with the processor's filter, then its rescale factor,
    clamped to [0, 1] as an 8-bit image is, then its mean and std per channel."""
    import torch.nn.functional as F

    image = _image(40, 40, seed=3)
    image[:, :, :20] = 250  # above 1 after the rescale of 1/200
    rgb = image[[2, 1, 0]].float()[None]
    for resample, mode in ((2, "bilinear"), (0, "nearest")):
        pre = ReferringDataPreProcessor(processing_folders[resample], size=CANVAS)
        out = pre(dict(inputs=[image], data_samples=[_sample()]), False)["inputs"]["vlm_pixels"]
        extra = dict(antialias=True, align_corners=False) if mode == "bilinear" else {}
        resized = F.interpolate(rgb, size=(VLM_SIZE, VLM_SIZE), mode=mode, **extra)
        mean = torch.tensor([0.5, 0.25, 0.75]).view(1, 3, 1, 1)
        std = torch.tensor([0.5, 0.2, 0.4]).view(1, 3, 1, 1)
        expected = ((resized / 200).clamp(0, 1) - mean) / std
        torch.testing.assert_close(out, expected)
        assert (resized / 200 > 1).any()  # the clamp matters on this image


def test_test_batch_records_padding_and_keeps_channels_when_asked(processing_folders):
    pre = ReferringDataPreProcessor(processing_folders[3], size=CANVAS, bgr_to_rgb=False)
    image = _image(30, 24, seed=4)
    sample = _sample(ori_shape=(60, 48))
    out = pre(dict(inputs=[image], data_samples=[sample]))  # testing unless told otherwise
    info = out["data_samples"][0].metainfo
    assert tuple(info["img_padding_size"]) == (0, CANVAS - 24, 0, CANVAS - 30)
    assert tuple(info["pad_shape"]) == (CANVAS, CANVAS)
    assert tuple(info["img_shape"]) == (30, 24) and tuple(info["ori_shape"]) == (60, 48)
    torch.testing.assert_close(out["inputs"]["sam_pixels"][0], _sam_preprocess(image))


def test_bad_inputs_are_refused_with_the_reason(processing_folders, tmp_path):
    pre = ReferringDataPreProcessor(processing_folders[3], size=CANVAS)
    with pytest.raises(ValueError, match=r"image 1 must be 3 x H x W, got \(4, 8, 8\)"):
        pre.prepare_images([_image(8, 8), torch.zeros(4, 8, 8)])
    with pytest.raises(ValueError, match=r"image 0 must be 3 x H x W, got \(8, 8\)"):
        pre.prepare_images([torch.zeros(8, 8)])
    for height, width in ((CANVAS + 1, 8), (8, CANVAS + 1)):
        with pytest.raises(ValueError, match=f"image 0 is {height}x{width}, larger than the model"):
            pre.prepare_images([_image(height, width)])
    pre.prepare_images([_image(CANVAS, CANVAS)])  # exactly S x S fits
    for text in ("", "   ", None):
        with pytest.raises(ValueError) as info:
            pre(dict(inputs=[_image()], data_samples=[_sample(text, expr_id=7)]), False)
        assert str(info.value) == (
            "sample {'img_path': 'scene.png', 'expr_id': 7} has an empty expression"
        )
    unnamed = SegDataSample(metainfo=dict(text=" "))  # no file name or id: all it has
    with pytest.raises(ValueError, match=r"^sample \{'text': ' '\} has an empty expression$"):
        pre(dict(inputs=[_image()], data_samples=[unnamed]), False)
    with pytest.raises(ValueError, match="expression 0 is empty or not a string: 3"):
        pre.tokenize([3])
    mismatched = _sample(mask_value=1, height=20, width=24)
    expected = r"training mask \(20, 24\) and image \(30, 24\) differ in size for scene.png: resize"
    with pytest.raises(ValueError, match=expected):
        pre(dict(inputs=[_image()], data_samples=[mismatched]), True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vlm_processing(str(tmp_path / "nowhere"))


def test_non_square_processor_is_refused(processing_folders, tmp_path):
    from transformers import AutoTokenizer, SiglipImageProcessor

    folder = tmp_path / "wide"
    AutoTokenizer.from_pretrained(processing_folders[3]).save_pretrained(folder)
    SiglipImageProcessor(size=dict(height=16, width=24)).save_pretrained(folder)
    with pytest.raises(
        ValueError, match="only square SigLIP inputs are supported, got .*height=16, width=24"
    ):
        load_vlm_processing(str(folder))
