"""Registered data transforms for referring segmentation."""

from aerialseg.datasets.transforms.caching import CachedTransforms
from aerialseg.datasets.transforms.formatting import REFERRING_META_KEYS, PackReferringInputs
from aerialseg.datasets.transforms.geometric import ReferringResize
from aerialseg.datasets.transforms.historic import (
    HISTORIC_MODES,
    SEPIA_RGB_MATRIX,
    HistoricFilter,
    apply_historic_filter,
)
from aerialseg.datasets.transforms.loading import LoadReferringMask

__all__ = [
    "CachedTransforms",
    "HISTORIC_MODES",
    "REFERRING_META_KEYS",
    "SEPIA_RGB_MATRIX",
    "HistoricFilter",
    "LoadReferringMask",
    "PackReferringInputs",
    "ReferringResize",
    "apply_historic_filter",
]
