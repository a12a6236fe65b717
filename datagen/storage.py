"""Atomic file writes, validated image reads and stable seeds shared by every stage.

Every output is written to a hidden temp file in the target folder and moved into place with
``os.replace``, so a killed run leaves either the old file or the new one; :func:`remove_temp_files`
sweeps the temp files a kill leaves behind.

This module is the project's one home for atomic writes (``llm`` and ``aerialseg.datasets`` /
``aerialseg.evaluation`` import them from here) because it must stay light: datagen worker processes
import it, and anything under ``aerialseg`` imports the whole plugin (torch, mmseg).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import cv2
import numpy as np

__all__ = [
    "InputError",
    "SourceError",
    "atomic_copy",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_png",
    "atomic_write_text",
    "read_json",
    "read_label_png",
    "read_rgb",
    "remove_temp_files",
    "stable_seed",
]

TEMP_SUFFIX = ".tmp"


class SourceError(ValueError):
    """A dataset-level source file (e.g. an annotation JSON) is malformed: the stage cannot
    start. The message names the file and the field."""


class InputError(ValueError):
    """A source file is missing, unreadable or malformed; ``reason`` is the skip-report key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ids, identical in every process (``hash()`` is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished outputs get the permissions a plain open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


def _make_temp(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "wb", fsync: bool = False, **open_kwargs
) -> Iterator[IO]:
    """Open a temp file beside ``path`` for writing; on a clean exit it replaces ``path``.

    An exception inside the ``with`` block deletes the temp file and leaves ``path`` untouched.
    ``fsync`` flushes the data to disk before the replace (for files a crash must not truncate).
    """
    path = Path(path)
    handle, temp = _make_temp(path)
    try:
        os.fchmod(handle, _FILE_MODE)
        with os.fdopen(handle, mode, **open_kwargs) as stream:
            yield stream
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    with atomic_open(path, "wb", fsync=fsync) as stream:
        stream.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 (newlines untranslated) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data, indent: int | None = None) -> Path:
    text = json.dumps(data, indent=indent, separators=None if indent else (",", ":"))
    return atomic_write_text(path, text)


def atomic_write_png(path: str | os.PathLike, image: np.ndarray, compression: int = 1) -> Path:
    """Write an (H, W, 3) RGB or (H, W) single-channel uint8 array as PNG."""
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:
        raise OSError(f"could not encode PNG for '{path}'")
    return atomic_write_bytes(path, encoded.tobytes())


def atomic_copy(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy (hard link when possible) ``source`` to ``target`` atomically."""
    target = Path(target)
    handle, temp = _make_temp(target)
    os.close(handle)
    try:
        os.unlink(temp)
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return target


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete temp files left by a killed writer under ``folder``; returns how many."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for path in folder.rglob(f".*{TEMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _read_unchanged(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"missing_{what}", f"{what} not found: '{path}'")
    # imread decodes straight from the file: no second copy of the compressed bytes in memory.
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"corrupt_{what}", f"{what} '{path}' is not a readable image")
    return image


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit RGB image as (H, W, 3) uint8; RGBA drops alpha.

    Raises:
        InputError: missing or corrupt file, 16-bit samples, or a single band.
    """
    path = Path(path)
    image = _read_unchanged(path, "image")
    if image.dtype != np.uint8:
        raise InputError(
            "unsupported_image", f"image '{path}' has {image.dtype} samples; convert it to 8-bit"
        )
    if image.ndim == 2 or image.shape[2] == 1:
        raise InputError("unsupported_image", f"image '{path}' has one band; expected RGB")
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit class-id mask as (H, W) uint8 (RGB masks: first channel).

    Raises:
        InputError: missing or corrupt file, or samples that are not 8-bit.
    """
    path = Path(path)
    label = _read_unchanged(path, "mask")
    if label.dtype != np.uint8:
        raise InputError(
            "unsupported_mask", f"mask '{path}' has {label.dtype} samples; expected uint8"
        )
    if label.ndim == 3:
        label = label[:, :, 0]
    return label
