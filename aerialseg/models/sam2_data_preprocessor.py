"""Batch preparation for :class:`~aerialseg.models.ClipSAM2` (RSRefSeg 2's pre-processing).

Images (spec ``shared/reference/rsrefseg2.md`` §1.1): the pipeline's keep-ratio resize (long side
S = 1024, cv2 bilinear) is shared with ClipSAM; here the BGR image becomes RGB, is scaled to
[0, 1] (``x / 255``) and padded bottom/right with 0 to S x S. Then

* SAM 2: ImageNet mean/std on the [0, 1] canvas; padding is normalised too (not reset to 0);
* SigLIP: the processor's mean/std (0.5/0.5) on the [0, 1] canvas *first*, then a bilinear
  resize to the SigLIP input size (512) without antialiasing (from 1024 an exact 2 x 2 mean).

Text (§1.2): the expression verbatim (no lower-casing, no stripping, no template), tokenised
with the checkpoint's tokenizer. Two modes:

* ``parity=True`` (RSRefSeg 2's own inference): padded to the longest expression *of the batch*;
  the padding mask goes to the text tower only if the tokenizer returns one (SigLIP 2's do not).
  The text tower then reads padding tokens of the shorter expressions, so an expression's
  features depend on the batch it is in; batch size 1 gives the unpadded answer. Use it to
  reproduce published numbers with their batch composition (``tools/test.py``: the test loader's
  batches; ``aerialseg predict``: the expressions of one image, in chunks of the text batch).
* ``parity=False`` (default): padded to the fixed ``text_length`` (64, SigLIP's positions), no
  mask (SigLIP's training setting), so features never depend on the other expressions of the
  batch.

Both truncate at ``text_length``; RSRefSeg 2 truncates at 128, but its text tower cannot read
more than 64 positions, so longer texts fail there instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmseg.registry import MODELS

from aerialseg.models.data_preprocessor import ReferringDataPreProcessor
from aerialseg.models.sam2 import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD


@MODELS.register_module()
class Sam2ReferringDataPreProcessor(ReferringDataPreProcessor):
    """RSRefSeg 2 pre-processing (see the module docstring).

    Args:
        vlm_path: SigLIP folder with the tokenizer and ``preprocessor_config.json``.
        size: S, SAM 2's input side.
        sam_mean, sam_std: SAM 2's RGB statistics on the [0, 1] scale (ImageNet).
        parity: pad the text to the batch's longest expression (RSRefSeg 2) instead of
            ``text_length``.
        text_length: SigLIP's text positions (64): truncation length, and padding length
            unless ``parity``.
        lowercase: lower-case expressions (off: RSRefSeg 2 was trained on raw text).
        bgr_to_rgb, seg_pad_val: as :class:`ReferringDataPreProcessor`.
    """

    # RSRefSeg 2 tokenizes the raw text; the padding mask reaches the text tower only as
    # ClipSAM2.encode_text decides.
    strip_text = False

    @property
    def text_padding(self) -> str:
        """Parity pads to the batch's longest expression, otherwise to ``text_length``."""
        return "longest" if self.parity else "max_length"

    def __init__(
        self,
        vlm_path: str,
        size: int = 1024,
        sam_mean: Sequence[float] = SAM2_PIXEL_MEAN,
        sam_std: Sequence[float] = SAM2_PIXEL_STD,
        parity: bool = False,
        bgr_to_rgb: bool = True,
        text_length: int = 64,
        lowercase: bool = False,
        seg_pad_val: int = 255,
    ):
        super().__init__(
            vlm_path=vlm_path,
            size=size,
            sam_mean=sam_mean,
            sam_std=sam_std,
            bgr_to_rgb=bgr_to_rgb,
            text_length=text_length,
            lowercase=lowercase,
            seg_pad_val=seg_pad_val,
        )
        self.parity = parity

    def normalise(self, canvas: torch.Tensor, heights_widths: Sequence) -> dict[str, torch.Tensor]:
        """B x 3 x S x S canvas (0-255 RGB, zero padding) -> the encoder inputs.

        ``heights_widths`` is accepted for the interface of :class:`ReferringDataPreProcessor`;
        padding is normalised like image pixels, as in RSRefSeg 2.

        Returns:
            ``sam_pixels`` B x 3 x S x S and ``vlm_pixels`` B x 3 x s x s.
        """
        unit = canvas.float() / 255
        sam_pixels = (unit - self.sam_mean) / self.sam_std
        vlm_pixels = F.interpolate(
            (unit - self.vlm_mean) / self.vlm_std,
            size=(self.vlm_size, self.vlm_size),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        )
        return dict(sam_pixels=sam_pixels, vlm_pixels=vlm_pixels)
