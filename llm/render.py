"""The two images of an enhancement request, rendered once, deterministically, with PIL.

This is the only rendering code: teacher requests, the SFT set and student inference all call
:func:`render_target`, so the teacher and the student see the same pixels.

- Instances and groups (``outline`` mode): image 1 is the patch at native resolution with a red
  rectangle of ``line_width`` pixels drawn just outside each target box (one box per connected
  component for groups); image 2 is a close-up crop without drawing, sized from the target extent
  (``crop_margin`` × the larger box side, at least ``crop_min_side``, never cutting the target),
  centred on it, padded with black outside the patch.
- Land-cover regions (``overlay`` mode): image 1 blends the region with red at ``overlay_alpha``;
  image 2 is the clean patch.

Both images are then resized (Lanczos) to ``image_size`` × ``image_size`` and encoded (PNG, or JPEG
where request size matters) with fixed settings, so equal inputs give equal bytes and equal hashes.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageDraw

from llm.config import RenderConfig

if TYPE_CHECKING:
    from llm.targets import EnhanceTarget

OUTLINE_COLOR = (255, 0, 0)
Box = tuple[int, int, int, int]


class RenderError(ValueError):
    """The patch image or the target geometry cannot be rendered (named in the message)."""


@dataclass(frozen=True)
class RenderedImages:
    """The request images: ``first`` (context: outline or overlay) and ``second`` (crop or clean).

    ``first_bytes``/``second_bytes`` are the encoded files, ``mime`` their type.
    """

    mode: Literal["outline", "overlay"]
    first: Image.Image
    second: Image.Image
    first_bytes: bytes
    second_bytes: bytes
    mime: str

    @property
    def digest(self) -> str:
        """sha256 over both encoded images."""
        return hashlib.sha256(self.first_bytes + b"\0" + self.second_bytes).hexdigest()


_ACCEPTED_MODES = {"RGB", "RGBA", "L", "LA", "P"}


@lru_cache(maxsize=64)
def _load_patch_image_cached(path: str, mtime_ns: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in _ACCEPTED_MODES:
                raise RenderError(
                    f"{path}: unsupported image mode {image.mode!r} (expected 8-bit RGB/RGBA/L/P)"
                )
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except RenderError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise RenderError(f"{path}: cannot read image ({exc})") from None
    array.setflags(write=False)
    return array


def load_patch_image(path: str | os.PathLike) -> np.ndarray:
    """Read a patch as uint8 RGB (H, W, 3); a small cache serves the targets of one patch."""
    path = Path(path)
    if not path.is_file():
        raise RenderError(f"{path}: patch image not found")
    return _load_patch_image_cached(str(path), path.stat().st_mtime_ns)


def component_boxes(mask: np.ndarray, min_pixels: int) -> list[Box]:
    """Boxes ``(xmin, ymin, xmax, ymax)`` (max exclusive) of the 8-connected mask components.

    Components below ``min_pixels`` are dropped unless nothing else is left.
    """
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    keep = [i for i in range(count) if sizes[i] >= min_pixels] or list(range(count))
    return [
        (slices[i][1].start, slices[i][0].start, slices[i][1].stop, slices[i][0].stop) for i in keep
    ]


def _union(boxes: list[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def crop_box(extent: Box, settings: RenderConfig) -> Box:
    """Square crop around ``extent`` that keeps it whole (may reach outside the patch)."""
    xmin, ymin, xmax, ymax = extent
    longest = max(xmax - xmin, ymax - ymin)
    side = max(int(np.ceil(longest * settings.crop_margin)), settings.crop_min_side, longest + 2)
    centre_x2, centre_y2 = xmin + xmax, ymin + ymax  # twice the centre keeps integer arithmetic
    left = (centre_x2 - side) // 2
    top = (centre_y2 - side) // 2
    return (left, top, left + side, top + side)


def _encode(image: Image.Image, settings: RenderConfig) -> bytes:
    buffer = io.BytesIO()
    if settings.image_format == "png":
        # Level 1: half the encoding time of the default for a few % more bytes; models see pixels.
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=settings.jpeg_quality, subsampling=0)
    return buffer.getvalue()


def _resize(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.LANCZOS)


def render_target(
    image: np.ndarray,
    mask: np.ndarray,
    kind: str,
    settings: RenderConfig,
    bbox: Box | None = None,
) -> RenderedImages:
    """Render the two request images of one target.

    Args:
        image: the patch, uint8 RGB (H, W, 3), native resolution.
        mask: the target mask, (H, W) bool/{0,1}.
        kind: ``'instance'``, ``'group'`` or ``'semantic'`` (overlay mode).
        settings: the ``render`` section of the run config.
        bbox: the instance box ``(xmin, ymin, xmax, ymax)``, max exclusive; groups use ``mask``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise RenderError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    mask = np.asarray(mask).astype(bool)
    if mask.shape != (height, width):
        raise RenderError(f"target mask is {mask.shape[::-1]} but the patch is {(width, height)}")
    patch = Image.fromarray(image)
    if kind == "semantic":
        if not mask.any():
            raise RenderError("target mask is empty")
        tinted = image.astype(np.float32)
        red = np.asarray(OUTLINE_COLOR, dtype=np.float32)
        alpha = settings.overlay_alpha
        tinted[mask] = (1 - alpha) * tinted[mask] + alpha * red
        first = Image.fromarray(np.rint(tinted).astype(np.uint8))
        second = patch
        mode: Literal["outline", "overlay"] = "overlay"
    else:
        if bbox is not None:
            xmin, ymin, xmax, ymax = (int(v) for v in bbox)
            if not (0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height):
                raise RenderError(f"target box {bbox} is outside the {width}x{height} patch")
            boxes = [(xmin, ymin, xmax, ymax)]
        else:
            boxes = component_boxes(mask, settings.min_component_pixels)
            if not boxes:
                raise RenderError("target mask is empty")
        first = patch.copy()
        draw = ImageDraw.Draw(first)
        w = settings.line_width
        for x0, y0, x1, y1 in boxes:
            # The rectangle hugs the box from outside so the target's own pixels stay unpainted.
            draw.rectangle((x0 - w, y0 - w, x1 - 1 + w, y1 - 1 + w), outline=OUTLINE_COLOR, width=w)
        second = patch.crop(crop_box(_union(boxes), settings))
        mode = "outline"
    first = _resize(first, settings.image_size)
    second = _resize(second, settings.image_size)
    mime = "image/png" if settings.image_format == "png" else "image/jpeg"
    return RenderedImages(
        mode, first, second, _encode(first, settings), _encode(second, settings), mime
    )


def render_enhance_target(target: EnhanceTarget, settings: RenderConfig) -> RenderedImages:
    """Load the target's patch and mask and render its two images; errors name the target."""
    image = load_patch_image(target.image_path)
    try:
        return render_target(image, target.mask.decode(), target.kind, settings, target.bbox)
    except RenderError as exc:
        raise RenderError(f"{target.uid}: {exc}") from None
