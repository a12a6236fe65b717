"""Historic-imagery simulation: black-and-white, black-and-white with film grain, and sepia.

:func:`apply_historic_filter` is the one implementation used by training, evaluation and the
``datagen`` historic stage. Defaults are the parameters stated in the Aerial-D paper (gamma 1.2,
contrast 0.8, grain sigma 0.1*255, sepia noise uniform in [0, 49]) with the classic sepia matrix
applied in RGB order, as the paper writes it. (The earlier code applied it to BGR arrays, which
swaps the R and B input weights, and called the grain effect with gamma 1.1 / contrast 0.85; pass
those values to reproduce it.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

__all__ = [
    "HISTORIC_MODES",
    "SEPIA_RGB_MATRIX",
    "HistoricFilter",
    "apply_historic_filter",
    "sample_seed",
]

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


def sample_seed(*parts: object) -> int:
    """A stable 64-bit seed from ids (Python's ``hash`` is salted per process, so not usable)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@TRANSFORMS.register_module()
class HistoricFilter(BaseTransform):
    """Apply :func:`apply_historic_filter` to ``results['img']`` (RGB or, by default, BGR).

    Training (``deterministic=False``): with probability ``prob`` a mode drawn uniformly from
    ``modes`` is applied, using NumPy's global generator (mmengine seeds it per worker).
    Evaluation (``deterministic=True``): the decision, the mode and the noise are seeded from
    ``seed`` and the sample ids named in ``seed_keys``, so a historic test set is the same in every
    run, on every worker count. The default keys select per image, so every expression of an image
    sees the same degraded image.

    Place it after ``Resize`` so the grain strength does not depend on the source resolution.

    Required keys: ``img``; ``dataset_name`` and the ``seed_keys`` when ``deterministic``.
    Added keys: ``historic`` (bool), ``historic_mode`` (str or None).

    Args:
        prob: probability of filtering a sample (1.0 for a historic test set).
        modes: the modes to draw from.
        deterministic: seed per sample from its ids instead of the global generator.
        seed: base seed of the deterministic draw.
        seed_keys: results keys that identify a sample for the deterministic draw.
        exempt_datasets: ``dataset_name`` values never filtered (Urban1960 is already historic).
        channel_order: ``'bgr'`` for images from mmcv's ``LoadImageFromFile``, else ``'rgb'``.
        filter_kwargs: forwarded to :func:`apply_historic_filter` (``gamma``, ``contrast``, ...).
    """

    def __init__(
        self,
        prob: float = 0.2,
        modes: Sequence[str] = HISTORIC_MODES,
        deterministic: bool = False,
        seed: int = 0,
        seed_keys: Sequence[str] = ("dataset_name", "img_id"),
        exempt_datasets: Sequence[str] = ("urban1960",),
        channel_order: str = "bgr",
        **filter_kwargs,
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        unknown = set(modes) - set(HISTORIC_MODES)
        if unknown or not modes:
            raise ValueError(f"modes must be a non-empty subset of {HISTORIC_MODES}, got {modes}")
        if channel_order not in ("bgr", "rgb"):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        self.prob = prob
        self.modes = tuple(modes)
        self.deterministic = deterministic
        self.seed = seed
        self.seed_keys = tuple(seed_keys)
        self.exempt_datasets = tuple(exempt_datasets)
        self.channel_order = channel_order
        self.filter_kwargs = filter_kwargs

    def _generator(self, results: dict) -> np.random.Generator:
        if not self.deterministic:
            return np.random.default_rng(np.random.randint(0, 2**31 - 1))
        missing = [key for key in self.seed_keys if key not in results]
        if missing:
            raise KeyError(f"HistoricFilter(deterministic=True) needs sample keys {missing}")
        return np.random.default_rng(
            sample_seed(self.seed, *(results[key] for key in self.seed_keys))
        )

    def transform(self, results: dict) -> dict:
        results["historic"] = False
        results["historic_mode"] = None
        if results.get("dataset_name") in self.exempt_datasets:
            return results
        rng = self._generator(results)
        if rng.random() >= self.prob:
            return results
        mode = self.modes[int(rng.integers(len(self.modes)))]
        image = results["img"]
        if self.channel_order == "bgr":
            image = image[:, :, ::-1]
        filtered = apply_historic_filter(
            np.ascontiguousarray(image), mode, rng, **self.filter_kwargs
        )
        if self.channel_order == "bgr":
            filtered = np.ascontiguousarray(filtered[:, :, ::-1])
        results["img"] = filtered
        results["historic"] = True
        results["historic_mode"] = mode
        return results

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(prob={self.prob}, modes={self.modes}, "
            f"deterministic={self.deterministic}, seed={self.seed}, seed_keys={self.seed_keys}, "
            f"exempt_datasets={self.exempt_datasets}, filter_kwargs={self.filter_kwargs})"
        )
