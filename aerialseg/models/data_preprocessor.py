"""Batch preparation for ClipSAM: one image canvas, two normalisations, fixed-length text.

Both encoders see the same canvas (the image padded bottom/right to S x S), so SigLIP's patch grid
and SAM's embedding grid cover the same ground:

* SAM: the canvas normalised with SAM's statistics (0-255 RGB), padding set to 0 after
  normalisation as in ``segment_anything.Sam.preprocess``;
* SigLIP: the canvas resized (antialiased) to the SigLIP input size and normalised with the
  checkpoint processor's own rescale factor, mean and std (0.5 / 0.5 for SigLIP and SigLIP 2);
* text: the expression from ``data_sample.metainfo['text']``, optionally lower-cased, tokenised
  with the checkpoint's tokenizer, padded and truncated to a fixed length (64), so the pooled
  feature never depends on the other texts in the batch.

Shapes: B samples, S = ``size`` (1024), s = SigLIP input size (384), L = ``text_length`` (64).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor
from mmseg.registry import MODELS
from mmseg.utils import stack_batch

from aerialseg.models.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD

# PIL resampling codes used by HF image processors.
_PIL_TO_TORCH_MODE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def load_vlm_processing(path: str) -> dict:
    """Tokenizer and image statistics of a SigLIP checkpoint folder.

    Returns:
        ``dict(tokenizer, image_size, mean, std, rescale, mode)``.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"SigLIP checkpoint folder '{folder}' does not exist")
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    size = getattr(processor, "size", None)
    if size and "height" in size:
        if size["height"] != size["width"]:
            raise ValueError(f"'{folder}': only square SigLIP inputs are supported, got {size}")
        image_size = size["height"]
    else:  # NaFlex (SigLIP 2): a square grid of sqrt(max_num_patches) patches
        image_size = int(round(processor.max_num_patches**0.5)) * processor.patch_size
    resample = getattr(processor, "resample", 2)
    resample = int(getattr(resample, "value", resample))
    return dict(
        tokenizer=tokenizer,
        image_size=image_size,
        mean=list(processor.image_mean),
        std=list(processor.image_std),
        rescale=float(processor.rescale_factor),
        mode=_PIL_TO_TORCH_MODE.get(resample, "bilinear"),
    )


@MODELS.register_module()
class ReferringDataPreProcessor(BaseDataPreprocessor):
    """Prepare images and expressions for :class:`~aerialseg.models.ClipSAM`.

    Args:
        vlm_path: SigLIP folder with the tokenizer and ``preprocessor_config.json``. ClipSAM fills
            it from its ``vlm.pretrained`` when not given.
        size: S, SAM's input side. Images larger than S are an error (resize them in the pipeline).
        sam_mean, sam_std: SAM's RGB statistics on the 0-255 scale.
        bgr_to_rgb: the pipeline's images are BGR (``LoadImageFromFile``).
        text_length: L, fixed token length (SigLIP's 64 text positions).
        lowercase: lower-case expressions first (SigLIP 2 was trained on lower-cased text).
        seg_pad_val: label of padded mask pixels.
    """

    # The tokenizer's padding: every expression to ``text_length`` (a subclass may pad to the
    # batch's longest instead).
    text_padding = "max_length"
    # Surrounding whitespace is dropped before tokenizing (RSRefSeg 2 keeps the raw text).
    strip_text = True

    def __init__(
        self,
        vlm_path: str,
        size: int = 1024,
        sam_mean: Sequence[float] = SAM_PIXEL_MEAN,
        sam_std: Sequence[float] = SAM_PIXEL_STD,
        bgr_to_rgb: bool = True,
        text_length: int = 64,
        lowercase: bool = True,
        seg_pad_val: int = 255,
    ):
        super().__init__()
        processing = load_vlm_processing(vlm_path)
        self.vlm_path = vlm_path
        self.tokenizer = processing["tokenizer"]
        self.vlm_size = processing["image_size"]
        self.vlm_resize_mode = processing["mode"]
        self.vlm_rescale = processing["rescale"]
        self.size = size
        self.bgr_to_rgb = bgr_to_rgb
        self.text_length = text_length
        self.lowercase = lowercase
        self.seg_pad_val = seg_pad_val
        self.register_buffer("sam_mean", torch.tensor(sam_mean).view(-1, 1, 1), False)
        self.register_buffer("sam_std", torch.tensor(sam_std).view(-1, 1, 1), False)
        self.register_buffer("vlm_mean", torch.tensor(processing["mean"]).view(-1, 1, 1), False)
        self.register_buffer("vlm_std", torch.tensor(processing["std"]).view(-1, 1, 1), False)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """N expressions -> token ids N x L (long) and a mask N x L (1 = real token).

        L is ``text_length``, or the longest expression of ``texts`` when ``text_padding`` is
        ``"longest"``.

        Raises:
            ValueError: an expression is empty or not a string.
        """
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"expression {index} is empty or not a string: {text!r}")
        texts = [text.strip() if self.strip_text else text for text in texts]
        texts = [text.lower() if self.lowercase else text for text in texts]
        tokens = self.tokenizer(
            texts,
            padding=self.text_padding,
            truncation=True,
            max_length=self.text_length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return (
            tokens["input_ids"].to(self.device),
            tokens["attention_mask"].to(self.device),
        )

    def prepare_images(
        self, images: Sequence[torch.Tensor], data_samples: list | None = None
    ) -> tuple[torch.Tensor, list]:
        """B images (3 x H x W, H, W <= S) -> the padded 0-255 RGB canvas B x 3 x S x S.

        With ``data_samples`` (training), their ``gt_sem_seg`` is padded the same way with
        ``seg_pad_val`` and the samples are returned; otherwise the per-image padding info
        (``img_padding_size``, ``pad_shape``) is.
        """
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"image {index} must be 3 x H x W, got {tuple(image.shape)}")
            if image.shape[1] > self.size or image.shape[2] > self.size:
                raise ValueError(
                    f"image {index} is {image.shape[1]}x{image.shape[2]}, larger than the model "
                    f"input {self.size}x{self.size}; resize it in the data pipeline"
                )
        images = [(image[[2, 1, 0]] if self.bgr_to_rgb else image).float() for image in images]
        return stack_batch(
            images,
            data_samples=data_samples,
            size=(self.size, self.size),
            pad_val=0,
            seg_pad_val=self.seg_pad_val,
        )

    def normalise(self, canvas: torch.Tensor, heights_widths: Sequence) -> dict[str, torch.Tensor]:
        """B x 3 x S x S canvas (0-255 RGB) and each image's (h, w) -> the encoder inputs.

        Returns:
            ``sam_pixels`` B x 3 x S x S and ``vlm_pixels`` B x 3 x s x s.
        """
        valid = torch.zeros_like(canvas[:, :1])
        for index, (height, width) in enumerate(heights_widths):
            valid[index, :, :height, :width] = 1
        sam_pixels = (canvas - self.sam_mean) / self.sam_std * valid
        vlm_pixels = F.interpolate(
            canvas,
            size=(self.vlm_size, self.vlm_size),
            mode=self.vlm_resize_mode,
            antialias=self.vlm_resize_mode != "nearest",
            align_corners=None if self.vlm_resize_mode == "nearest" else False,
        )
        vlm_pixels = ((vlm_pixels * self.vlm_rescale).clamp(0, 1) - self.vlm_mean) / self.vlm_std
        return dict(sam_pixels=sam_pixels, vlm_pixels=vlm_pixels)

    def forward(self, data: dict, training: bool = False) -> dict:
        """Collated ``dict(inputs=[3 x H x W uint8], data_samples=[SegDataSample])`` ->
        ``dict(inputs=dict(sam_pixels, vlm_pixels, input_ids, text_mask), data_samples)``.

        In training the ``gt_sem_seg`` masks are padded like the images (label ``seg_pad_val``);
        in testing they are left at their original size for evaluation.
        """
        data = self.cast_data(data)
        images, data_samples = data["inputs"], data["data_samples"]
        texts = []
        for sample in data_samples:
            text = sample.metainfo.get("text")
            if not isinstance(text, str) or not text.strip():
                ids = {k: sample.metainfo.get(k) for k in ("img_path", "expr_id") if k in sample}
                raise ValueError(f"sample {ids or sample.metainfo} has an empty expression")
            texts.append(text)
        if training:
            for sample, image in zip(data_samples, images):
                if "gt_sem_seg" in sample and sample.gt_sem_seg.shape != tuple(image.shape[1:]):
                    raise ValueError(
                        f"training mask {sample.gt_sem_seg.shape} and image "
                        f"{tuple(image.shape[1:])} differ in size for "
                        f"{sample.metainfo.get('img_path')}: resize the mask with the image"
                    )
            canvas, data_samples = self.prepare_images(images, data_samples)
        else:
            canvas, padding = self.prepare_images(images)
            for sample, pad_info, image in zip(data_samples, padding, images):
                sample.set_metainfo({**pad_info, "img_shape": tuple(image.shape[1:])})
        input_ids, text_mask = self.tokenize(texts)
        inputs = self.normalise(canvas, [image.shape[1:] for image in images])
        inputs.update(input_ids=input_ids, text_mask=text_mask)
        return dict(inputs=inputs, data_samples=data_samples)
