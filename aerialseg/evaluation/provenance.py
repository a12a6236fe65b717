"""Provenance of a benchmark number: everything needed to rebuild the run that produced it.

:func:`run_provenance` describes one evaluation run (code version, packages, config, checkpoint,
seed, device, dtype); :func:`test_set_provenance` one test set within it (the datasets with their
checksums and text field, the metric protocol, the historic filter). ``tools/test.py`` writes both
into every table and into the header line of each ``per_sample.jsonl``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os.path as osp
import subprocess
from collections.abc import Iterable, Mapping
from importlib import metadata

from aerialseg.datasets.checksums import file_sha256

__all__ = [
    "PROVENANCE_PACKAGES",
    "VOLATILE_CONFIG_KEYS",
    "compare_provenance",
    "config_sha256",
    "dataset_entries",
    "git_state",
    "package_versions",
    "run_provenance",
    "test_set_provenance",
]

# Distribution names whose versions can move a number.
PROVENANCE_PACKAGES = (
    "torch",
    "torchvision",
    "mmsegmentation",
    "mmengine",
    "mmcv",
    "mmdet",
    "transformers",
    "peft",
    "segment-anything",
    "sam2",
    "numpy",
    "pillow",
    "pycocotools",
    "aerialseg",
)
# Config keys that say where a run writes or what it loads, not how it computes: left out of the
# config hash so the same evaluation from another folder hashes the same.
VOLATILE_CONFIG_KEYS = ("work_dir", "load_from", "resume", "launcher")
# Fields that differ between two faithful re-runs.
RERUN_VOLATILE_FIELDS = ("date", "checkpoint.path", "config.path", "work_dir", "command")
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def package_versions(names: Iterable[str] = PROVENANCE_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names``; packages that are not installed are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state(path: str = REPO_ROOT) -> dict:
    """``{'commit': sha, 'dirty': bool}`` of the checkout holding ``path``; ``dirty`` means
    tracked files differ from the commit or untracked, non-ignored files exist. Outside a git
    checkout (an installed wheel) ``commit`` is ``None``."""
    try:
        commit = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", path, "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def config_sha256(cfg) -> str:
    """SHA-256 of the resolved config (after ``--cfg-options``) as canonical JSON, without
    :data:`VOLATILE_CONFIG_KEYS`."""
    data = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    data = {k: v for k, v in data.items() if k not in VOLATILE_CONFIG_KEYS}
    text = json.dumps(data, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _device_and_dtype(model) -> tuple[str, str]:
    import torch

    parameters = list(model.parameters()) if model is not None else []
    if not parameters:
        return "unknown", "unknown"
    devices = sorted({str(p.device) for p in parameters})
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in parameters})
    device = ", ".join(devices)
    if any(d.startswith("cuda") for d in devices):
        device += f" ({torch.cuda.get_device_name(parameters[0].device)})"
    return device, "+".join(dtypes)


def run_provenance(
    cfg, config_path: str, checkpoint: str, runner=None, config_digest: str | None = None
) -> dict:
    """Provenance shared by every test set of one run (one checkpoint).

    Args:
        cfg: the config the runner was built from.
        config_path: the config file given on the command line.
        checkpoint: the checkpoint file evaluated.
        runner: the built runner (for the seed it used and the model's device and dtype).
        config_digest: :func:`config_sha256` of the config as the user gave it (file +
            ``--cfg-options``), before the tool adapted it for this checkpoint (e.g. pretrained
            paths found on this machine); default: the digest of ``cfg``.
    """
    model = getattr(runner, "model", None)
    module = getattr(model, "module", model)
    device, dtype = _device_and_dtype(module)
    randomness = cfg.get("randomness") or {}
    return {
        "git": git_state(),
        "packages": package_versions(),
        "config": {"path": config_path, "sha256": config_digest or config_sha256(cfg)},
        "checkpoint": {"path": checkpoint, "sha256": file_sha256(checkpoint)},
        "seed": getattr(runner, "seed", randomness.get("seed")),
        "deterministic": bool(randomness.get("deterministic", False)),
        "device": device,
        "dtype": dtype,
    }


def _leaf_datasets(dataset) -> list:
    """The datasets inside mmengine wrappers (``ConcatDataset``, ``RepeatDataset``, ...)."""
    if hasattr(dataset, "datasets"):
        return [leaf for inner in dataset.datasets for leaf in _leaf_datasets(inner)]
    if hasattr(dataset, "dataset") and not hasattr(dataset, "describe"):
        return _leaf_datasets(dataset.dataset)
    return [dataset]


def dataset_entries(dataset) -> list[dict]:
    """:meth:`BaseReferringDataset.describe` of each dataset (wrappers are opened); datasets of
    other kinds get their class and length only."""
    entries = []
    for leaf in _leaf_datasets(dataset):
        if hasattr(leaf, "describe"):
            entries.append(leaf.describe())
        else:
            entries.append({"type": type(leaf).__name__, "samples": len(leaf)})
    return entries


def test_set_provenance(test_set: Mapping, dataset, metrics: Iterable) -> dict:
    """Provenance of one test set: its datasets, the protocol of each ``ReferringMetric`` and the
    historic filter it applied (``None`` for a clean set)."""
    protocols = [m.describe_protocol() for m in metrics if hasattr(m, "describe_protocol")]
    historic = test_set.get("historic_filter")
    return {
        "test_set": test_set["name"],
        "datasets": dataset_entries(dataset),
        "protocol": protocols[0] if len(protocols) == 1 else protocols,
        "historic_filter": copy.deepcopy(dict(historic)) if historic else None,
    }


def _flat(record: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def compare_provenance(
    recorded: Mapping, current: Mapping, ignore: Iterable[str] = RERUN_VOLATILE_FIELDS
) -> list[str]:
    """Fields (dotted) whose values differ between two provenance records, except ``ignore``
    (and their sub-fields); empty when a re-run reproduces the recorded one."""
    ignore = tuple(ignore)
    a, b = _flat(recorded), _flat(current)
    differing = []
    for key in sorted(set(a) | set(b)):
        if any(key == field or key.startswith(field + ".") for field in ignore):
            continue
        if a.get(key) != b.get(key):
            differing.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return differing
