"""AerialSeg: referring-expression segmentation of aerial images, as an MMSegmentation plugin.

Importing this package registers its datasets, transforms, metrics, models and hooks into
MMSegmentation's registries, so configs only need
``custom_imports = dict(imports=['aerialseg'], allow_failed_imports=False)`` and
``default_scope = 'mmseg'``.
"""

from aerialseg import apis, datasets, engine, evaluation, models  # noqa: F401  (registers modules)
from aerialseg.version import __version__

__all__ = ["__version__", "apis", "datasets", "engine", "evaluation", "models"]
