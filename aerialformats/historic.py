"""Historic-imagery simulation maths: black-and-white, black-and-white with film grain, sepia.

:func:`apply_historic_filter` is the one implementation used by training and evaluation (through
the mmcv transform ``aerialseg.datasets.transforms.HistoricFilter``) and by the ``datagen``
historic stage, so a baked variant equals what the on-the-fly transform produces for the same
generator. numpy only. Defaults are the parameters stated in the Aerial-D paper (gamma 1.2,
contrast 0.8, grain sigma 0.1*255, sepia noise uniform in [0, 49]) with the classic sepia matrix
applied in RGB order, as the paper writes it. (The earlier code applied it to BGR arrays, which
swaps the R and B input weights, and called the grain effect with gamma 1.1 / contrast 0.85; pass
those values to reproduce it.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["HISTORIC_MODES", "LUMA_RGB_WEIGHTS", "SEPIA_RGB_MATRIX", "apply_historic_filter"]

HISTORIC_MODES = ("bw", "bw_grain", "sepia")
# Rows give output (R', G', B') as weights of the input (R, G, B).
SEPIA_RGB_MATRIX = (
    (0.393, 0.769, 0.189),
    (0.349, 0.686, 0.168),
    (0.272, 0.534, 0.131),
)
# ITU-R BT.601 luma weights for (R, G, B), the weights OpenCV's RGB2GRAY uses.
LUMA_RGB_WEIGHTS = (0.299, 0.587, 0.114)


def _luma(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) float32 grey in [0, 255]."""
    return image.astype(np.float32) @ np.asarray(LUMA_RGB_WEIGHTS, dtype=np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def apply_historic_filter(
    image: np.ndarray,
    mode: str,
    rng: np.random.Generator,
    *,
    gamma: float = 1.2,
    contrast: float = 0.8,
    grain_sigma: float = 25.5,
    sepia_matrix: Sequence[Sequence[float]] = SEPIA_RGB_MATRIX,
    sepia_noise_max: int = 49,
) -> np.ndarray:
    """Make an RGB image look like archival imagery.

    Args:
        image: (H, W, 3) uint8 RGB image.
        mode: ``'bw'`` (grey), ``'bw_grain'`` (grey, gamma ``255*(g/255)**gamma``, contrast
            ``(g - mean)*contrast + mean`` around the image mean, additive Gaussian grain of std
            ``grain_sigma``) or ``'sepia'`` (``sepia_matrix`` on RGB, then uniform integer noise in
            ``[0, sepia_noise_max]`` added with saturation).
        rng: source of the grain / noise; the same generator state gives the same output.

    Returns:
        (H, W, 3) uint8 RGB image (grey modes repeat the grey channel three times).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(
            f"historic filter needs a uint8 array, got {getattr(image, 'dtype', image)}"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"historic filter needs an (H, W, 3) RGB image, got shape {image.shape}")
    if mode == "bw":
        grey = _to_uint8(_luma(image))
    elif mode == "bw_grain":
        grey = _luma(image)
        grey = 255.0 * (grey / 255.0) ** gamma
        grey = (grey - grey.mean()) * contrast + grey.mean()
        grey = np.clip(grey, 0, 255) + rng.normal(0.0, grain_sigma, size=grey.shape)
        grey = _to_uint8(grey)
    elif mode == "sepia":
        matrix = np.asarray(sepia_matrix, dtype=np.float32)
        if matrix.shape != (3, 3):
            raise ValueError(f"sepia_matrix must be 3x3, got shape {matrix.shape}")
        toned = _to_uint8(image.astype(np.float32) @ matrix.T).astype(np.int16)
        noise = rng.integers(0, sepia_noise_max + 1, size=toned.shape, dtype=np.int16)
        return np.minimum(toned + noise, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown historic mode {mode!r}; choose from {HISTORIC_MODES}")
    return np.repeat(grey[:, :, None], 3, axis=2)
