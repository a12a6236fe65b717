"""``aerialseg export-model``: one self-contained folder for sharing a trained model.

A training checkpoint holds only what trained and names its pretrained files by path. The export
copies those files next to it and points the saved config at them, so the folder works from any
working directory and on any machine:

.. code-block:: text

    OUT/
      model.pth          trained tensors + meta: the config (pretrained paths 'pretrained/<name>')
                         and the sha256 of every pretrained file
      pretrained/<name>  each pretrained file or folder (SigLIP folder, SAM .pth), copied
      manifest.json      what is where, with sizes and sha256 (for humans and download checks)

Loaders find ``pretrained/<name>`` relative to ``model.pth``'s folder (a pretrained root, see
:mod:`aerialseg.engine.pretrained`) and verify the digests. The folder is written under a temporary
name and renamed when complete; an existing ``OUT`` is never touched.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from mmengine.config import Config

from aerialseg.apis.referring_segmenter import config_from_meta
from aerialseg.apis.trained_weights import read_checkpoint
from aerialseg.engine.pretrained import (
    PretrainedFile,
    apply_resolved,
    pretrained_record,
    recorded_pretrained_files,
    resolve_pretrained_files,
)

MODEL_FILE = "model.pth"
PRETRAINED_DIR = "pretrained"
MANIFEST = "manifest.json"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _unique_names(files: Iterable[PretrainedFile]) -> list[str]:
    names: list[str] = []
    for file in files:
        base = os.path.basename(os.path.normpath(file.resolved))
        stem, dot, suffix = base.partition(".")
        name, counter = base, 2
        while name in names:
            name = f"{stem}-{counter}{dot}{suffix}"
            counter += 1
        names.append(name)
    return names


def export_model(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: str | os.PathLike | None = None,
    cfg_options: dict | None = None,
    pretrained_root: str | Iterable[str] | None = None,
) -> dict:
    """Write ``out_dir`` (see the module docstring) from a trained checkpoint.

    Args:
        checkpoint: the trained checkpoint (``iter_*.pth``).
        out_dir: a folder that does not exist yet.
        config: the model config, when the checkpoint stores none.
        cfg_options: overrides merged into the config first.
        pretrained_root: where to look for the pretrained files (as for ``predict``).

    Returns:
        the manifest (also written to ``out_dir/manifest.json``).

    Raises:
        FileExistsError: ``out_dir`` exists.
        PretrainedFilesError, CheckpointError: as for loading the model.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"'{out}' exists; export into a new folder (nothing was written)")
    checkpoint = os.fspath(checkpoint)
    tensors, meta = read_checkpoint(checkpoint)
    if config is not None:
        if not os.path.isfile(config):
            raise FileNotFoundError(f"config file not found: '{config}'")
        cfg = Config.fromfile(os.fspath(config))
    else:
        cfg = config_from_meta(meta, checkpoint)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    recorded = recorded_pretrained_files(meta)
    for key in cfg_options or {}:
        recorded.pop(key.removeprefix("model."), None)
    files = resolve_pretrained_files(cfg.model, pretrained_root, checkpoint, recorded)
    names = _unique_names(files)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / PRETRAINED_DIR).mkdir()
        exported = []
        for file, name in zip(files, names):
            source, target = Path(file.resolved), staging / PRETRAINED_DIR / name
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
            relative = f"{PRETRAINED_DIR}/{name}"
            exported.append(PretrainedFile(file.keys, relative, relative, file.sha256))
        # The saved config names the copies relative to model.pth's folder.
        cfg.model = apply_resolved(cfg.model.to_dict(), exported)
        record = pretrained_record(exported)
        model_meta = {
            "cfg": cfg.pretty_text,
            "pretrained_files": {k: dict(v, resolved=None) for k, v in record.items()},
            "exported_from": os.path.basename(checkpoint),
        }
        for key in ("iter", "epoch", "seed", "experiment_name", "mmengine_version"):
            if key in meta:
                model_meta[key] = meta[key]
        torch.save({"state_dict": tensors, "meta": model_meta}, staging / MODEL_FILE)
        manifest = {
            "format": "aerialseg-exported-model/1",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "model": MODEL_FILE,
            "trained_tensors": len(tensors),
            "pretrained": {
                file.path: {
                    "config_keys": [f"model.{key}" for key in file.keys],
                    "sha256": file.sha256,
                    "bytes": _size(staging / file.path),
                }
                for file in exported
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
