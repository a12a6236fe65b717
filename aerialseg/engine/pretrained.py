"""The pretrained files a model config names: finding them again, and checking they are the same.

A trained ClipSAM checkpoint holds only what trained; its frozen towers are rebuilt from the
pretrained files named in the config saved inside it (``model.vlm.pretrained``,
``model.sam.checkpoint``, ...). Those paths are usually relative (``checkpoints/sam_vit_b.pth``,
``work_dirs/demo/pretrained/siglip``), so on their own they only work from the folder the model was
trained in. :func:`resolve_pretrained_files` finds each file again, trying in order:

1. the path as written (absolute, or relative to the working directory);
2. under each *pretrained root*: the roots given (``--pretrained-root``), then those in the
   ``AERIALSEG_CHECKPOINTS`` environment variable (``os.pathsep``-separated), then the folder of the
   trained checkpoint itself (where ``aerialseg export-model`` puts them): first
   ``ROOT/<path as written>``, then ``ROOT/<file or folder name>``;
3. the absolute path the file had when the checkpoint was saved.

Every checkpoint saved by the runner records the sha256 of each pretrained file
(:class:`RecordPretrainedFilesHook`, under ``meta['pretrained_files']``). A candidate whose digest
differs is skipped (it is another file of the same name), so a model never runs silently on other
frozen weights. Whatever cannot be found is reported in one :class:`PretrainedFilesError` that names
every missing file, where it was looked for, and how to fix it.

Which config entries are pretrained files: every string under a key named in
:data:`PRETRAINED_KEY_NAMES` anywhere in ``cfg.model``, plus the dotted keys a segmentor class lists
in its ``pretrained_config_keys`` attribute. The functions here read configs and files only: no
model is built.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

CHECKPOINTS_ENV = "AERIALSEG_CHECKPOINTS"
# Config keys that hold a pretrained file or folder in the model configs of this project and of
# mmengine (``init_cfg=dict(type='Pretrained', checkpoint=...)``).
PRETRAINED_KEY_NAMES = ("pretrained", "checkpoint", "vlm_path")
_BLOCK = 1 << 20


class PretrainedFilesError(FileNotFoundError):
    """Pretrained files of a model config cannot be found (or only with other contents)."""


@dataclass(frozen=True)
class PretrainedFile:
    """One pretrained file or folder of a config.

    Attributes:
        keys: the dotted config keys under ``model`` that name it (``('vlm.pretrained',
            'data_preprocessor.vlm_path')``).
        path: the path as written in the config.
        resolved: the absolute path found, or ``None``.
        sha256: its digest (:func:`path_sha256`), or ``None`` when not found.
    """

    keys: tuple[str, ...]
    path: str
    resolved: str | None = None
    sha256: str | None = None


# --------------------------------------------------------------------------------- digests
_digest_cache: dict[tuple, str] = {}
_digest_lock = threading.Lock()


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` in a fixed order, without hidden files (caches, locks)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (over its files' relative names and digests, sorted).

    Digests are cached per process by (path, size, modification time): a model loaded twice hashes
    its pretrained files once (about 1 s per GB).
    """
    path = Path(os.path.abspath(os.fspath(path)))
    if path.is_file():
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with _digest_lock:
            cached = _digest_cache.get(key)
        if cached is None:
            cached = _file_sha256(str(path))
            with _digest_lock:
                _digest_cache[key] = cached
        return cached
    if path.is_dir():
        digest = hashlib.sha256()
        for file in _folder_files(path):
            name = file.relative_to(path).as_posix()
            digest.update(f"{name}\0{path_sha256(file)}\n".encode())
        return digest.hexdigest()
    raise FileNotFoundError(f"no such file or folder: '{path}'")


# ------------------------------------------------------------------------ config entries
def _get(tree: Mapping, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set(tree: Mapping, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value


def _scan(node, prefix: str, names: Sequence[str], found: dict[str, str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if key in names and isinstance(value, str) and value:
                found[dotted] = value
            else:
                _scan(value, dotted + ".", names, found)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            _scan(value, f"{prefix}{index}.", names, found)


def declared_keys(model_cfg: Mapping) -> tuple[str, ...]:
    """Dotted keys the segmentor class of ``model_cfg`` declares as pretrained files."""
    model_type = model_cfg.get("type") if isinstance(model_cfg, Mapping) else None
    if not isinstance(model_type, str):
        return ()
    from mmseg.registry import MODELS

    try:
        model_class = MODELS.get(model_type)
    except KeyError:
        model_class = None
    return tuple(getattr(model_class, "pretrained_config_keys", ()) or ())


def pretrained_entries(model_cfg: Mapping) -> dict[str, str]:
    """``{dotted key under model: path}`` of every pretrained file or folder in ``model_cfg``."""
    found: dict[str, str] = {}
    _scan(model_cfg, "", PRETRAINED_KEY_NAMES, found)
    for dotted in declared_keys(model_cfg):
        value = _get(model_cfg, dotted)
        if isinstance(value, str) and value:
            found[dotted] = value
    return found


# ----------------------------------------------------------------------------- resolution
def pretrained_roots(
    roots: Iterable[str | os.PathLike] | str | None = None, checkpoint: str | None = None
) -> list[str]:
    """The folders searched for pretrained files, in order (see the module docstring)."""
    if isinstance(roots, str | os.PathLike):
        roots = [roots]
    ordered = [os.fspath(root) for root in roots or ()]
    ordered += [part for part in os.environ.get(CHECKPOINTS_ENV, "").split(os.pathsep) if part]
    if checkpoint:
        ordered.append(os.path.dirname(os.path.abspath(os.fspath(checkpoint))))
    unique = []
    for root in ordered:
        root = os.path.abspath(os.path.expanduser(root))
        if root not in unique:
            unique.append(root)
    return unique


def _candidates(path: str, roots: Sequence[str], recorded: str | None) -> list[str]:
    path = os.path.expanduser(path)
    name = os.path.basename(os.path.normpath(path))
    candidates = [path]
    for root in roots:
        if not os.path.isabs(path):
            candidates.append(os.path.join(root, path))
        candidates.append(os.path.join(root, name))
    if recorded:
        candidates.append(recorded)
    unique = []
    for candidate in candidates:
        candidate = os.path.abspath(candidate)
        if candidate not in unique:
            unique.append(candidate)
    return unique


def recorded_pretrained_files(meta: Mapping | None) -> dict[str, dict]:
    """``meta['pretrained_files']`` of a checkpoint (``{}`` for older checkpoints)."""
    if not isinstance(meta, Mapping):
        return {}
    recorded = meta.get("pretrained_files")
    return dict(recorded) if isinstance(recorded, Mapping) else {}


def resolve_pretrained_files(
    model_cfg: Mapping,
    roots: Iterable[str | os.PathLike] | str | None = None,
    checkpoint: str | None = None,
    recorded: Mapping[str, Mapping] | None = None,
    verify: bool = True,
) -> list[PretrainedFile]:
    """Find every pretrained file of ``model_cfg`` (see the module docstring for the order).

    Args:
        model_cfg: the ``model`` entry of a config.
        roots: extra pretrained roots searched first (``--pretrained-root``).
        checkpoint: the trained checkpoint; its folder is the last root.
        recorded: ``meta['pretrained_files']`` of that checkpoint (paths and sha256 at save time).
        verify: accept a candidate only if its sha256 equals the recorded one (``False``: the
            first existing candidate).

    Returns:
        one :class:`PretrainedFile` per distinct path, with ``resolved`` and ``sha256`` set.

    Raises:
        PretrainedFilesError: naming every file that was not found (or only with another sha256),
            the places searched, and the ways to point at them.
    """
    recorded = recorded or {}
    search = pretrained_roots(roots, checkpoint)
    by_path: dict[str, list[str]] = {}
    for dotted, path in pretrained_entries(model_cfg).items():
        by_path.setdefault(path, []).append(dotted)
    found, problems, missing_keys = [], [], []
    for path, keys in by_path.items():
        record = next((recorded[k] for k in keys if isinstance(recorded.get(k), Mapping)), {})
        expected = record.get("sha256") if verify else None
        candidates = _candidates(path, search, record.get("resolved"))
        existing = [c for c in candidates if os.path.exists(c)]
        chosen = None
        for candidate in existing:
            digest = path_sha256(candidate)
            if expected is None or digest == expected:
                chosen = PretrainedFile(tuple(keys), path, candidate, digest)
                break
        if chosen is not None:
            found.append(chosen)
            continue
        missing_keys.append(keys[0])
        where = ", ".join(f"'{c}'" for c in candidates)
        if existing:
            problems.append(
                f"model.{keys[0]} = '{path}': found {', '.join(repr(c) for c in existing)}, but "
                f"not with the sha256 recorded at training ({expected[:12]}...): other weights"
            )
        else:
            problems.append(f"model.{keys[0]} = '{path}': not found (looked at {where})")
    if problems:
        raise PretrainedFilesError(
            f"cannot find {len(problems)} pretrained file(s) of this model: "
            + "; ".join(problems)
            + f". Fix: put them in a folder named by {CHECKPOINTS_ENV}=DIR or "
            "--pretrained-root DIR (as DIR/<name>), or give each path with --cfg-options "
            f"model.{missing_keys[0]}=PATH; to share a trained model, use 'aerialseg "
            "export-model', which copies them next to it"
        )
    return found


def apply_resolved(model_cfg: dict, files: Iterable[PretrainedFile]) -> dict:
    """A copy of ``model_cfg`` whose pretrained entries hold the resolved absolute paths."""
    model_cfg = copy.deepcopy(model_cfg)
    for file in files:
        for dotted in file.keys:
            _set(model_cfg, dotted, file.resolved)
    return model_cfg


def pretrained_record(files: Iterable[PretrainedFile]) -> dict[str, dict]:
    """``meta['pretrained_files']``: per config key, the path as written, where it was and its
    sha256."""
    return {
        dotted: {"path": file.path, "resolved": file.resolved, "sha256": file.sha256}
        for file in files
        for dotted in file.keys
    }


@HOOKS.register_module()
class RecordPretrainedFilesHook(Hook):
    """Store the sha256 of the model's pretrained files in every checkpoint the runner saves.

    The digests are computed once, before training starts, from the paths in the runner's config;
    they end up in ``checkpoint['meta']['pretrained_files']`` (see :func:`pretrained_record`), where
    loaders check that they rebuild the frozen towers from the same files.
    """

    priority = "VERY_LOW"

    def __init__(self) -> None:
        self._record: dict[str, dict] | None = None

    def before_run(self, runner) -> None:
        files = resolve_pretrained_files(runner.cfg.model, verify=False)
        self._record = pretrained_record(files)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._record is None:
            self.before_run(runner)
        checkpoint.setdefault("meta", {})["pretrained_files"] = copy.deepcopy(self._record)
