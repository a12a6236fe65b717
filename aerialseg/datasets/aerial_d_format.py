"""The Aerial-D per-patch XML format, as the ``aerialseg.datasets`` namespace exposes it.

The format (dataclasses, reader, atomic writer, RLE parsing) lives in the light bottom package
:mod:`aerialformats.aerial_d` so that ``datagen`` and ``llm`` read and write it without importing
torch or mmseg; this module re-exports it for the datasets and for existing imports.
"""

# A pure re-export: the names and their list are aerialformats.aerial_d's own.
from aerialformats.aerial_d import *  # noqa: F403
from aerialformats.aerial_d import __all__  # noqa: F401
