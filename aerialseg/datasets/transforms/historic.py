"""``HistoricFilter``: the mmcv transform over the shared historic-imagery maths.

The filter itself (:func:`aerialformats.historic.apply_historic_filter`, numpy only) is shared
with the ``datagen`` historic stage; it is re-exported here with its constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from aerialformats.historic import HISTORIC_MODES, SEPIA_RGB_MATRIX, apply_historic_filter
from aerialformats.seeds import stable_seed as sample_seed

__all__ = [
    "HISTORIC_MODES",
    "SEPIA_RGB_MATRIX",
    "HistoricFilter",
    "apply_historic_filter",
    "sample_seed",
]


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
