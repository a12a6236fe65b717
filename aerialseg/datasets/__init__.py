"""Referring-segmentation datasets (registered in mmseg ``DATASETS``) and their transforms.

Heavy optional readers (pyarrow for parquet) are imported where they are used.
"""

from aerialseg.datasets import transforms  # noqa: F401  (registers transforms)
from aerialseg.datasets.aerial_d import AerialDDataset, samples_from_patch
from aerialseg.datasets.aerial_d_format import (
    AerialDFormatError,
    AerialGroup,
    AerialObject,
    Expression,
    PatchAnnotation,
    RLEMask,
    read_patch_xml,
    write_patch_xml,
)
from aerialseg.datasets.base import (
    DATASET_NAMES,
    EXPR_TYPES,
    TARGET_TYPES,
    BaseReferringDataset,
    DatasetFormatError,
)
from aerialseg.datasets.nwpu_refer import NWPUReferDataset
from aerialseg.datasets.refsegrs import RefSegRSDataset
from aerialseg.datasets.risbench import RISBenchDataset
from aerialseg.datasets.rrsisd import RRSISDDataset
from aerialseg.datasets.urban1960 import Urban1960Dataset
from aerialseg.datasets.weighted_sampler import WeightedDatasetSampler

__all__ = [
    "DATASET_NAMES",
    "EXPR_TYPES",
    "TARGET_TYPES",
    "AerialDDataset",
    "AerialDFormatError",
    "AerialGroup",
    "AerialObject",
    "BaseReferringDataset",
    "DatasetFormatError",
    "Expression",
    "NWPUReferDataset",
    "PatchAnnotation",
    "RISBenchDataset",
    "RLEMask",
    "RRSISDDataset",
    "RefSegRSDataset",
    "Urban1960Dataset",
    "WeightedDatasetSampler",
    "read_patch_xml",
    "samples_from_patch",
    "write_patch_xml",
]
