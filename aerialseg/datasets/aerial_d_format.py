"""The Aerial-D per-patch XML format, as the ``aerialseg.datasets`` namespace exposes it.

The format (dataclasses, reader, atomic writer, RLE parsing) lives in the light bottom package
:mod:`aerialformats.aerial_d` so that ``datagen`` and ``llm`` read and write it without importing
torch or mmseg; this module re-exports it for the datasets and for existing imports.
"""

from aerialformats.aerial_d import (
    EXPRESSION_KINDS,
    GROUP_TARGET_TYPES,
    LLM_EXPRESSION_TYPES,
    PROVENANCE_KEYS,
    SEMANTIC_GROUP_ID_RANGE,
    AerialDFormatError,
    AerialGroup,
    AerialObject,
    Expression,
    GroupRelationship,
    PatchAnnotation,
    RLEMask,
    domain_from_filename,
    group_target_type_from_id,
    parse_rle_text,
    patch_to_element,
    read_patch_xml,
    remove_stale_temp_files,
    rle_run_lengths,
    write_patch_xml,
)

__all__ = [
    "EXPRESSION_KINDS",
    "GROUP_TARGET_TYPES",
    "LLM_EXPRESSION_TYPES",
    "PROVENANCE_KEYS",
    "SEMANTIC_GROUP_ID_RANGE",
    "AerialDFormatError",
    "AerialGroup",
    "AerialObject",
    "Expression",
    "GroupRelationship",
    "PatchAnnotation",
    "RLEMask",
    "domain_from_filename",
    "group_target_type_from_id",
    "parse_rle_text",
    "patch_to_element",
    "read_patch_xml",
    "remove_stale_temp_files",
    "rle_run_lengths",
    "write_patch_xml",
]
