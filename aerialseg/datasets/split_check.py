"""Refuse configs that select checkpoints on the split they report (test used as val).

RSRefSeg 2's configs validate on the test JSONL and keep the best checkpoint by that score, which
makes their test numbers optimistic. Here, a config's validation datasets and its test datasets
must read different files. A dataset without a test split (Aerial-D) opts out by name, with a
reason, through the config key ``allow_val_test_overlap = dict(<dataset name>="why")``; the
reason is recorded in the benchmark tables.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Mapping

__all__ = [
    "ValTestOverlapError",
    "check_val_test_separate",
    "dataset_identity",
    "leaf_dataset_cfgs",
]

# Dataset-config keys that name what is read; with the type, the root and the split they decide
# whether two dataset configs read the same files.
FILE_KEYS = ("ann_file", "refs_file", "instances_file", "ann_format", "subsets")


class ValTestOverlapError(ValueError):
    """The validation and test sets of a config read the same files."""


def leaf_dataset_cfgs(dataset_cfg) -> list[Mapping]:
    """The leaf dataset configs of ``dataset_cfg``, through ``ConcatDataset``'s ``datasets`` and
    wrappers' ``dataset`` (``[]`` for anything not a mapping)."""
    if not isinstance(dataset_cfg, Mapping):
        return []
    if "datasets" in dataset_cfg:
        return [leaf for inner in dataset_cfg["datasets"] for leaf in leaf_dataset_cfgs(inner)]
    if isinstance(dataset_cfg.get("dataset"), Mapping):
        return leaf_dataset_cfgs(dataset_cfg["dataset"])
    return [dataset_cfg]


def _dataset_name(dataset_type: str) -> str:
    from mmseg.registry import DATASETS

    dataset_class = DATASETS.get(dataset_type) if dataset_type else None
    return getattr(dataset_class, "DATASET_NAME", "") or str(dataset_type)


def dataset_identity(dataset_cfg: Mapping) -> tuple:
    """What a dataset config reads: (type, real data root, split, file-naming arguments)."""
    root = dataset_cfg.get("data_root") or ""
    files = tuple(
        (key, str(dataset_cfg[key])) for key in FILE_KEYS if dataset_cfg.get(key) is not None
    )
    return (
        str(dataset_cfg.get("type", "")),
        osp.realpath(root) if root else "",
        str(dataset_cfg.get("split", "")),
        files,
    )


def _test_dataset_cfgs(cfg) -> list[tuple[str, Mapping]]:
    sets = cfg.get("test_sets") or []
    if sets:
        return [
            (entry["name"], leaf)
            for entry in sets
            for leaf in leaf_dataset_cfgs(entry["dataloader"].get("dataset"))
        ]
    test_loader = cfg.get("test_dataloader") or {}
    return [("test", leaf) for leaf in leaf_dataset_cfgs(test_loader.get("dataset"))]


def check_val_test_separate(cfg) -> dict[str, str]:
    """Raise :class:`ValTestOverlapError` if a validation dataset reads the same files as a test
    dataset, unless ``cfg.allow_val_test_overlap`` names that dataset.

    Returns:
        ``{dataset name: reason}`` for each overlap that the config allows (empty if none).
    """
    val_loader = cfg.get("val_dataloader") or {}
    val_ids = {
        dataset_identity(leaf): leaf for leaf in leaf_dataset_cfgs(val_loader.get("dataset"))
    }
    allowed = dict(cfg.get("allow_val_test_overlap") or {})
    overlaps, accepted = [], {}
    for set_name, leaf in _test_dataset_cfgs(cfg):
        if dataset_identity(leaf) not in val_ids:
            continue
        name = _dataset_name(str(leaf.get("type", "")))
        if name in allowed:
            accepted[name] = str(allowed[name])
        else:
            overlaps.append(
                f"{name} split '{leaf.get('split')}' under '{leaf.get('data_root')}' "
                f"(test set '{set_name}')"
            )
    if overlaps:
        raise ValTestOverlapError(
            "the validation set and the test set read the same files: "
            + "; ".join(overlaps)
            + ". Checkpoints selected on the test split give optimistic test numbers: validate "
            "on the val split. If the dataset has no separate test split, say so in the config: "
            "allow_val_test_overlap = dict(<dataset name>='<reason>')"
        )
    return accepted
