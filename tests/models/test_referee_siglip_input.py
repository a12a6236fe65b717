"""SigLIP / SigLIP 2 inputs against Hugging Face's own processor classes on the same folder.

The folder holds what a hub SigLIP 2 checkpoint holds, at toy size: a ``SiglipModel`` (the
fixed-resolution SigLIP 2 releases are ``model_type: siglip``), a case-sensitive Gemma tokenizer
(``tokenizer.json``, BPE trained here) and a ``SiglipImageProcessor`` config (bicubic resize,
rescale 1/255, mean/std 0.5). The referees are ``SiglipImageProcessor`` (torchvision backend),
``SiglipImageProcessorPil`` and the tokenizer called with SigLIP's documented text rules: padding to
the model's 64 positions (``padding="max_length"``), truncation, and lower-cased text for SigLIP 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mmseg.structures import SegDataSample
from PIL import Image

from aerialseg.models.data_preprocessor import ReferringDataPreProcessor
from aerialseg.models.siglip import SiglipTowers

TEXT_LENGTH = 64
IMAGE_SIZE = 32  # SigLIP input side s
CANVAS = 48  # the SAM canvas side S the preprocessor pads to
WORDS = [
    "The",
    "the",
    "Red",
    "red",
    "Car",
    "car",
    "Blue",
    "blue",
    "Building",
    "buildings",
    "In",
    "in",
    "Top",
    "top",
    "Left",
    "left",
    "Right",
    "right",
    "Of",
    "of",
    "All",
    "all",
    "Water",
    "water",
    "Large",
    "large",
    "Vehicle",
    "vehicles",
    "Near",
    "near",
    "Road",
    "road",
    "Lake",
    "lake",
]
TEXTS = [
    "The Red Car in the Top Left",
    "all water",
    "Large Vehicles near the Blue Building",
    # Longer than the 64 text positions: truncated, as the tokenizer truncates.
    " ".join(["the large red car near the road"] * 12),
]


def _gemma_tokenizer():
    """A case-sensitive Gemma tokenizer (BPE on a small mixed-case corpus), appending <eos>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    corpus = [" ".join(WORDS[i : i + 5]) for i in range(len(WORDS))] * 3
    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    bpe.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    trainer = trainers.BpeTrainer(
        vocab_size=256,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"],
        initial_alphabet=sorted(set("".join(WORDS)) | {"▁"}),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return GemmaTokenizer(
        vocab=model["vocab"], merges=merges, add_bos_token=False, add_eos_token=True
    )


TINY_TOWER = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def _text_tower(tokenizer) -> dict:
    """The tiny text tower's config, sized and tokened by ``tokenizer`` (SigLIP and SigLIP 2)."""
    return dict(
        TINY_TOWER,
        vocab_size=len(tokenizer),
        max_position_embeddings=TEXT_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory):
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("siglip2")
    tokenizer = _gemma_tokenizer()
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=_text_tower(tokenizer),
        vision_config=dict(TINY_TOWER, image_size=IMAGE_SIZE, patch_size=8),
    )
    SiglipModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size=dict(height=IMAGE_SIZE, width=IMAGE_SIZE)).save_pretrained(folder)
    return str(folder)


def _preprocessor(folder: str, lowercase: bool = True) -> ReferringDataPreProcessor:
    """Lower-casing is the default (SigLIP 2's rule), so it is only ever switched off here."""
    option = {} if lowercase else dict(lowercase=False)
    return ReferringDataPreProcessor(
        vlm_path=folder, size=CANVAS, text_length=TEXT_LENGTH, **option
    )


def _referee_tokens(folder: str, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokens = tokenizer(
        texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
    )
    return tokens["input_ids"], tokens["attention_mask"]


def test_token_ids_equal_the_tokenizer_on_lower_cased_text(siglip2_folder):
    ids, mask = _preprocessor(siglip2_folder).tokenize(TEXTS)
    expected_ids, expected_mask = _referee_tokens(siglip2_folder, [t.lower() for t in TEXTS])
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
    assert ids.shape == (len(TEXTS), TEXT_LENGTH) and mask[3].all()  # the long one is cut at 64
    # This tokenizer is case-sensitive, so skipping the lower-casing would change the ids.
    cased_ids, _ = _referee_tokens(siglip2_folder, TEXTS)
    assert not torch.equal(cased_ids[0], expected_ids[0])


def test_without_lower_casing_the_text_is_tokenized_as_written(siglip2_folder):
    ids, mask = _preprocessor(siglip2_folder, lowercase=False).tokenize(TEXTS)
    expected_ids, expected_mask = _referee_tokens(siglip2_folder, TEXTS)
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)


def test_surrounding_whitespace_is_dropped_before_tokenizing(siglip2_folder):
    ids, mask = _preprocessor(siglip2_folder).tokenize(["  The Red Car \n"])
    expected_ids, expected_mask = _referee_tokens(siglip2_folder, ["the red car"])
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)
    raw_ids, raw_mask = _referee_tokens(siglip2_folder, ["  the red car \n"])
    assert not torch.equal(raw_ids, expected_ids)  # this tokenizer keeps the spaces
    keeps_spaces = _preprocessor(siglip2_folder)
    keeps_spaces.strip_text = False  # as RSRefSeg 2's preprocessor does
    ids, mask = keeps_spaces.tokenize(["  The Red Car \n"])
    assert torch.equal(ids, raw_ids) and torch.equal(mask, raw_mask)


def test_text_length_is_the_models_position_count(siglip2_folder):
    towers = SiglipTowers(pretrained=siglip2_folder)
    assert towers.text_length == TEXT_LENGTH == _preprocessor(siglip2_folder).text_length
    ids, mask = _preprocessor(siglip2_folder).tokenize(TEXTS)
    tokens, pooled = towers.encode_text(ids, mask)
    assert tokens.shape == (len(TEXTS), TEXT_LENGTH, 16) and pooled.shape == (len(TEXTS), 16)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 with fine texture and a colour ramp (channel order and resampling both show)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([255 * xx / width, 255 * yy / height, np.full_like(xx, 60.0)], axis=-1)
    image += rng.normal(0, 25, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _vlm_pixels(folder: str, rgb: np.ndarray) -> torch.Tensor:
    """Our SigLIP input for one RGB image that enters the preprocessor as the pipeline gives it
    (BGR uint8 tensor, C x H x W)."""
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)))
    sample = SegDataSample(metainfo=dict(text="the red car", ori_shape=rgb.shape[:2]))
    data = _preprocessor(folder)(dict(inputs=[bgr], data_samples=[sample]), False)
    return data["inputs"]["vlm_pixels"][0]


def _canvas(rgb: np.ndarray) -> Image.Image:
    """The image padded with black at the bottom/right to the square canvas (what SAM sees)."""
    canvas = np.zeros((CANVAS, CANVAS, 3), dtype=np.uint8)
    canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
    return Image.fromarray(canvas)


@pytest.mark.parametrize("shape", [(CANVAS, CANVAS), (30, CANVAS), (CANVAS, 21)])
def test_pixels_equal_the_hf_image_processors(siglip2_folder, shape):
    from transformers import SiglipImageProcessor, SiglipImageProcessorPil

    rgb = _image(*shape)
    ours = _vlm_pixels(siglip2_folder, rgb)
    canvas = _canvas(rgb)
    torch_backend = SiglipImageProcessor.from_pretrained(siglip2_folder)
    expected = torch_backend(images=canvas, return_tensors="pt")["pixel_values"][0]
    assert ours.shape == expected.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    # The processors resize uint8 images with 8-bit fixed-point kernels (ours resizes floats):
    # within about 2 grey levels, well below what a wrong filter, a missing antialias or other
    # statistics change (14, 34 and more levels).
    _assert_within_grey_levels(ours, expected, max_levels=2.5, mean_levels=0.4)
    pil_backend = SiglipImageProcessorPil.from_pretrained(siglip2_folder)
    with_pil = torch.as_tensor(pil_backend(images=canvas, return_tensors="np")["pixel_values"][0])
    _assert_within_grey_levels(ours, with_pil, max_levels=2.5, mean_levels=0.4)


def _assert_within_grey_levels(ours, expected, max_levels: float, mean_levels: float) -> None:
    levels = (ours - expected).abs() * 0.5 * 255  # back from the [-1, 1] range to 0-255
    assert levels.max() <= max_levels and levels.mean() <= mean_levels, (
        f"max {levels.max():.2f}, mean {levels.mean():.3f} grey levels"
    )


@pytest.fixture(scope="module")
def naflex_folder(tmp_path_factory):
    """A NaFlex SigLIP 2 folder (``Siglip2Model``, 4 x 4 patches of 8 px, bilinear processor)."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    folder = tmp_path_factory.mktemp("siglip2_naflex")
    tokenizer = _gemma_tokenizer()
    torch.manual_seed(0)
    config = Siglip2Config(
        text_config=_text_tower(tokenizer),
        vision_config=dict(TINY_TOWER, patch_size=8, num_patches=16),
    )
    Siglip2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(folder)
    return str(folder)


def test_naflex_patches_and_features_equal_hf_siglip2(naflex_folder):
    """Our square input cut into NaFlex patches equals ``Siglip2ImageProcessor``'s patches, and our
    patch map equals ``Siglip2VisionModel``'s last hidden state on the processor's own inputs."""
    from transformers import Siglip2ImageProcessor, Siglip2VisionModel

    rgb = _image(CANVAS, CANVAS, seed=3)
    preprocessor = _preprocessor(naflex_folder)
    assert preprocessor.vlm_size == IMAGE_SIZE  # sqrt(16 patches) x 8 px
    ours = _vlm_pixels(naflex_folder, rgb)
    processor = Siglip2ImageProcessor.from_pretrained(naflex_folder)
    expected = processor(images=Image.fromarray(rgb), return_tensors="pt")
    assert expected["spatial_shapes"].tolist() == [[4, 4]]
    assert expected["pixel_attention_mask"].all()
    # Patches in the processor's layout: rows, columns, then 8 x 8 x RGB.
    patches = ours.reshape(3, 4, 8, 4, 8).permute(1, 3, 2, 4, 0).reshape(16, 8 * 8 * 3)
    _assert_within_grey_levels(
        patches, expected["pixel_values"][0], max_levels=2.5, mean_levels=0.4
    )

    towers = SiglipTowers(pretrained=naflex_folder, attn_implementation="eager").eval()
    vision = Siglip2VisionModel.from_pretrained(naflex_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        features = towers.encode_image(ours[None])
        reference = vision(
            pixel_values=patches[None],
            pixel_attention_mask=expected["pixel_attention_mask"],
            spatial_shapes=expected["spatial_shapes"],
        ).last_hidden_state
    assert features.shape == (1, 16, 4, 4)
    torch.testing.assert_close(features[0].flatten(1).T, reference[0], atol=1e-5, rtol=1e-5)
