"""ClipSAM and its parts, registered in MMSegmentation's ``MODELS`` on import.

Heavy libraries (transformers, peft, segment-anything, sam2) are imported when a model is built, not
when :mod:`aerialseg` is imported. The tiny test/demo checkpoints are written by
:mod:`aerialseg.models.tiny` (``python -m aerialseg.models.tiny``).
"""

from aerialseg.models.cascaded_prompter import CascadedPrompter
from aerialseg.models.checkpoint_keys import CheckpointMismatchError
from aerialseg.models.clipsam import ClipSAM
from aerialseg.models.clipsam2 import ClipSAM2
from aerialseg.models.data_preprocessor import ReferringDataPreProcessor
from aerialseg.models.mask_loss import ReferringMaskLoss
from aerialseg.models.optim_constructor import TrainableParamsOptimWrapperConstructor
from aerialseg.models.prompter import ActivationPrompter
from aerialseg.models.sam import SamParts
from aerialseg.models.sam2 import Sam2Parts
from aerialseg.models.sam2_data_preprocessor import Sam2ReferringDataPreProcessor
from aerialseg.models.siglip import SiglipTowers

__all__ = [
    "ActivationPrompter",
    "CascadedPrompter",
    "CheckpointMismatchError",
    "ClipSAM",
    "ClipSAM2",
    "ReferringDataPreProcessor",
    "ReferringMaskLoss",
    "Sam2Parts",
    "Sam2ReferringDataPreProcessor",
    "SamParts",
    "SiglipTowers",
    "TrainableParamsOptimWrapperConstructor",
]
