"""Check a downloaded dataset before training on it: counts, files, checksums, categories.

Behind ``tools/check_dataset.py CONFIG``. Every dataset a config names (train, val, test loaders
and ``test_sets``) is built without its pipeline and checked:

- **files**: every image and mask file the samples name exists;
- **counts**: the number of samples per split equals the published one (:data:`PUBLISHED_COUNTS`)
  when the dataset is read unfiltered; with ``manifest``, it must equal the manifest's instead;
- **checksums**: the annotation and sample digests (:meth:`BaseReferringDataset.describe`) equal
  the manifest's, when one is given. A manifest is a file written by ``--write-manifest`` on a
  known-good copy, or the ``benchmark.json`` of a ``tools/test.py`` run (its provenance records
  the same digests), so a copy can be checked against the data a published table was made on;
- **summary**: samples per category (and per target type) and split.
"""

from __future__ import annotations

import json
import os.path as osp
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aerialformats.atomic import atomic_write_text
from aerialseg.datasets.split_check import leaf_dataset_cfgs

__all__ = [
    "PUBLISHED_COUNTS",
    "CheckReport",
    "DatasetCheck",
    "PublishedCounts",
    "check_dataset_main",
    "check_datasets",
    "dataset_cfgs_of",
    "load_manifest",
]


@dataclass(frozen=True)
class PublishedCounts:
    """Samples per split as the dataset's authors (or, when ``certain`` is False, secondary
    sources) give them. A mismatch is a failure when certain, a warning otherwise."""

    counts: Mapping[str, int]
    source: str
    certain: bool = True


PUBLISHED_COUNTS: dict[str, PublishedCounts] = {
    "rrsisd": PublishedCounts(
        {"train": 12181, "val": 1740, "test": 3481}, "RRSIS-D paper (Liu et al., CVPR 2024)"
    ),
    "refsegrs": PublishedCounts(
        {"train": 2172, "val": 431, "test": 1817},
        "secondary sources (train from a public training notebook, test from a results README, "
        "val by subtraction from the 4,420 triplets of the paper)",
        certain=False,
    ),
    "aerial_d": PublishedCounts(
        {"train": 1117794, "val": 404729}, "Aerial-D paper (expressions, all types)"
    ),
    "risbench": PublishedCounts(
        {"train": 26300, "val": 10013, "test": 16158}, "RISBench / CroBIM paper (Dong et al.)"
    ),
}
# Datasets whose published per-split counts are not known here (say so rather than guess).
UNKNOWN_COUNTS = {
    "nwpu_refer": "the NWPU-Refer paper gives 15,003 images and 49,745 targets, not per-split "
    "expression counts",
    "urban1960": "samples are per (image, class present) templates, a conversion of ours",
}
# The summary lists at most this many categories per dataset (the rest are summed).
MAX_CATEGORIES = 40


@dataclass
class DatasetCheck:
    """The result for one dataset split."""

    label: str
    description: dict = field(default_factory=dict)
    categories: Counter = field(default_factory=Counter)
    target_types: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    checks: list[DatasetCheck]

    @property
    def ok(self) -> bool:
        return not any(check.failures for check in self.checks)

    def manifest(self) -> dict:
        """What was found, in the form :func:`load_manifest` reads back."""
        return {
            "datasets": [
                {**check.description, "categories": dict(sorted(check.categories.items()))}
                for check in self.checks
                if check.description
            ]
        }

    def format(self) -> str:
        lines = []
        for check in self.checks:
            status = "FAIL" if check.failures else "ok"
            described = check.description
            lines.append(f"[{status}] {check.label}")
            if described:
                lines.append(
                    f"    {described['samples']} samples, {described['annotation_files']} "
                    f"annotation files, annotations sha256 {described['annotation_sha256'][:16]}…, "
                    f"samples sha256 {described['samples_sha256'][:16]}…"
                )
            lines += [f"    FAIL: {message}" for message in check.failures]
            lines += [f"    warning: {message}" for message in check.warnings]
            lines += [f"    note: {message}" for message in check.notes]
            if check.target_types:
                lines.append(
                    "    target types: "
                    + ", ".join(f"{k} {v}" for k, v in sorted(check.target_types.items()))
                )
        lines += self._category_tables()
        verdict = "all checks passed" if self.ok else "some checks FAILED"
        return "\n".join([*lines, verdict])

    def _category_tables(self) -> list[str]:
        """Per dataset: samples per category (rows, most frequent first) and split (columns)."""
        by_dataset: dict[str, dict[str, Counter]] = {}
        for check in self.checks:
            if check.description:
                splits = by_dataset.setdefault(check.description["dataset"], {})
                splits.setdefault(check.description["split"], Counter()).update(check.categories)
        lines = []
        for name, splits in by_dataset.items():
            total = sum(splits.values(), Counter())
            ranked = [category for category, _ in total.most_common()]
            lines += ["", f"{name}: samples per category", ""]
            lines.append("| category | " + " | ".join(splits) + " |")
            lines.append("|---|" + "---|" * len(splits))
            for category in ranked[:MAX_CATEGORIES]:
                counts = " | ".join(str(splits[split][category]) for split in splits)
                lines.append(f"| {category or '(none)'} | {counts} |")
            if len(ranked) > MAX_CATEGORIES:
                rest = ranked[MAX_CATEGORIES:]
                counts = " | ".join(str(sum(splits[split][c] for c in rest)) for split in splits)
                lines.append(f"| ({len(rest)} more categories) | {counts} |")
            lines.append("")
        return lines


def dataset_cfgs_of(cfg, splits: Sequence[str] | None = None) -> list[dict]:
    """The distinct leaf dataset configs of a config's loaders and ``test_sets`` (wrappers
    opened), optionally only those of ``splits``."""
    from aerialseg.datasets.split_check import dataset_identity

    sources = [
        (cfg.get(loader) or {}).get("dataset")
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
    ]
    sources += [entry["dataloader"].get("dataset") for entry in cfg.get("test_sets") or []]
    found: dict[tuple, dict] = {}
    for source in sources:
        for leaf in leaf_dataset_cfgs(source):
            if splits is not None and leaf.get("split") not in splits:
                continue
            found.setdefault(dataset_identity(leaf), dict(leaf))
    return list(found.values())


def load_manifest(path: str) -> dict[tuple, dict]:
    """``{(dataset, split): entry}`` from a ``--write-manifest`` file or a ``benchmark.json``."""
    with open(path, encoding="utf-8") as stream:
        data = json.load(stream)
    entries = list(data.get("datasets") or [])
    for result in data.get("results") or []:
        entries += (result.get("provenance") or {}).get("datasets") or []
    if not entries:
        raise ValueError(f"{path}: no dataset entries (expected a manifest or a benchmark.json)")
    return {(entry["dataset"], entry["split"]): entry for entry in entries}


def _missing_files(infos: Iterable[dict]) -> list[str]:
    missing = []
    for info in infos:
        for key in ("img_path", "seg_map_path"):
            path = info.get(key)
            if path and not osp.isfile(path) and path not in missing:
                missing.append(path)
    return missing


def _check_one(dataset_cfg: dict, manifest: dict | None, use_published: bool) -> DatasetCheck:
    from mmseg.registry import DATASETS

    label = f"{dataset_cfg.get('type')} split '{dataset_cfg.get('split')}' under " + repr(
        dataset_cfg.get("data_root")
    )
    check = DatasetCheck(label=label)
    try:
        dataset = DATASETS.build({**dataset_cfg, "pipeline": [], "lazy_init": False})
    except (OSError, ValueError, KeyError) as error:  # DatasetFormatError is a ValueError
        check.failures.append(f"cannot be read: {error}")
        return check
    infos = [dataset.get_data_info(index) for index in range(len(dataset))]
    missing = _missing_files(infos)
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:5])
        check.failures.append(
            f"{len(missing)} image/mask files are missing: {shown}"
            + (" ..." if len(missing) > 5 else "")
        )
        return check
    check.description = dataset.describe()
    check.categories = Counter(info.get("category", "") for info in infos)
    check.target_types = Counter(info.get("target_type", "") for info in infos)
    name, split = check.description["dataset"], check.description["split"]
    count = check.description["samples"]
    if manifest is not None:
        expected = manifest.get((name, split))
        if expected is None:
            check.failures.append(f"the manifest has no entry for {name} {split}")
            return check
        for key in ("samples", "annotation_sha256", "samples_sha256"):
            if expected.get(key) is not None and expected[key] != check.description[key]:
                check.failures.append(
                    f"{key} is {check.description[key]}, the manifest says {expected[key]}"
                )
        return check
    published = PUBLISHED_COUNTS.get(name)
    filters = check.description["filters"]
    filtered = any(filters.get(key) for key in ("expr_types", "target_types", "indices", "domains"))
    if not use_published or published is None or split not in published.counts:
        reason = UNKNOWN_COUNTS.get(name, "no published count for this split")
        check.notes.append(f"sample count not checked ({reason if use_published else 'disabled'})")
    elif filtered:
        check.notes.append("sample count not checked: the dataset is filtered")
    elif count != published.counts[split]:
        message = f"{count} samples, the release has {published.counts[split]} ({published.source})"
        (check.failures if published.certain else check.warnings).append(message)
    return check


def check_datasets(
    cfg,
    splits: Sequence[str] | None = None,
    manifest_path: str | None = None,
    write_manifest: str | None = None,
    use_published: bool = True,
) -> CheckReport:
    """Check every dataset of ``cfg`` (see the module docstring); never raises for bad data, the
    report says what failed."""
    manifest = load_manifest(manifest_path) if manifest_path else None
    dataset_cfgs = dataset_cfgs_of(cfg, splits)
    if not dataset_cfgs:
        raise ValueError(
            "the config names no dataset" + (f" of splits {list(splits)}" if splits else "")
        )
    report = CheckReport([_check_one(d, manifest, use_published) for d in dataset_cfgs])
    if write_manifest:
        atomic_write_text(write_manifest, json.dumps(report.manifest(), indent=1) + "\n")
    return report


def check_dataset_main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/check_dataset.py``; returns the exit status (0: all passed)."""
    import argparse

    from mmengine.config import Config, DictAction
    from mmengine.registry import init_default_scope

    parser = argparse.ArgumentParser(description="Check a dataset's files, counts and checksums")
    parser.add_argument(
        "config", help="a config naming the datasets, e.g. configs/_base_/datasets/rrsisd.py"
    )
    parser.add_argument("--splits", nargs="+", help="check only these splits")
    parser.add_argument(
        "--manifest",
        help="compare counts and checksums with this file (a --write-manifest output or a "
        "benchmark.json of tools/test.py)",
    )
    parser.add_argument("--write-manifest", help="write what was found to this JSON file")
    parser.add_argument(
        "--no-published-counts",
        action="store_true",
        help="do not compare sample counts with the published ones",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, e.g. test_dataloader.dataset.data_root=/data/rrsisd",
    )
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f"config file not found: '{args.config}'")
    import aerialseg.datasets  # noqa: F401  (registers the datasets)

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    report = check_datasets(
        cfg, args.splits, args.manifest, args.write_manifest, not args.no_published_counts
    )
    print(report.format())
    return 0 if report.ok else 1
