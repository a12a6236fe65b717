"""Checkpoint loading that never unpickles arbitrary code.

PyTorch >= 2.6 loads with ``weights_only=True`` by default, which refuses every global that is
not allow-listed. mmengine 0.10.7 checkpoints hold a few harmless non-tensor objects (the message
hub's ``HistoryBuffer`` with numpy arrays), so resuming fails out of the box. The fix is to
allow-list exactly those classes, never to switch ``weights_only`` off: a checkpoint from the
internet is a program otherwise.

:func:`safe_torch_load` is the one entry point for user checkpoint files in this project, and
importing :mod:`aerialseg` routes mmengine's local-file checkpoint loader (``load_checkpoint``,
``Runner.resume``, ``load_from``) through it.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not a PyTorch checkpoint."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint references Python globals outside the allow-list."""

    def __init__(self, path: str | os.PathLike, names: Iterable[str]):
        self.path = str(path)
        self.names = sorted(set(names))
        super().__init__(
            f"refusing to load checkpoint '{self.path}': it references "
            f"{', '.join(repr(n) for n in self.names)}, which "
            f"{'is' if len(self.names) == 1 else 'are'} not on AerialSeg's allow-list of safe "
            "globals. Loading it would run arbitrary code. If you trust this file and the class "
            "is plain data, add it with aerialseg.engine.allow_checkpoint_globals([...])."
        )


def _numpy_safe_globals() -> list:
    """numpy classes that appear when mmengine pickles its logged scalars and arrays."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"]
    return [
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def _history_buffer_method(owner, name: str):
    """Stands in for ``builtins.getattr`` while unpickling.

    mmengine pickles the statistics methods of ``HistoryBuffer`` (``min``, ``max``, ``mean``...)
    as ``getattr(HistoryBuffer, 'min')``. A general ``getattr`` would let a crafted file walk from
    any allow-listed object to ``os.system``, so only public methods of ``HistoryBuffer`` resolve.
    """
    attribute = vars(HistoryBuffer).get(name) if owner is HistoryBuffer else None
    if name.startswith("_") or not callable(attribute):
        raise pickle.UnpicklingError(
            f"getattr({getattr(owner, '__name__', owner)!r}, {name!r}) "
            "is not allowed (only HistoryBuffer statistics methods are); "
            "Unsupported global: GLOBAL builtins.getattr"
        )
    return attribute


_SAFE_GLOBALS: list = [
    HistoryBuffer,
    (_history_buffer_method, "builtins.getattr"),
    *_numpy_safe_globals(),
]


def allow_checkpoint_globals(objects: Iterable) -> None:
    """Add classes/functions to the allow-list used by every checkpoint load."""
    torch.serialization.add_safe_globals(list(objects))


# torch names a refused global as "GLOBAL <module>.<name> was not an allowed global" or "... whose
# module <m> is blocked"; the lower-case word "global" also occurs in its advice text.
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


def _unsafe_globals(path: str, error: Exception) -> list[str]:
    """The refused globals: torch lists those of a zip checkpoint (allow-listed ones excluded); a
    legacy pickle, or ``getattr`` used beyond ``HistoryBuffer``, is named only in the message."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to the name in torch's message
        names = []
    return names or _GLOBAL_IN_MESSAGE.findall(str(error)) or ["<unknown global>"]


def _not_a_checkpoint(path: str) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, from its first bytes; ``None`` if it may be.

    ``torch.save`` writes a zip archive holding ``<name>/data.pkl`` (or, in the legacy format, a
    pickle). Anything else (a PNG, a text file, a safetensors file) is reported as such, instead of
    as a pickle that failed to load, or worse, as a refused global ("arbitrary code").
    """
    with open(path, "rb") as stream:
        head = stream.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None  # a truncated torch zip: torch.load reports it as corrupt
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "it is a zip archive without data.pkl"
        return None
    if head[:1] == b"\x80":  # a pickle protocol header, as in torch's legacy format
        return None
    return f"it starts with bytes {head[:8]!r}"


def safe_torch_load(path: str | os.PathLike, map_location="cpu"):
    """Load a ``.pth``/``.pt`` file with ``weights_only=True`` and the project's allow-list.

    Args:
        path: a local checkpoint file.
        map_location: as for :func:`torch.load`.

    Returns:
        Whatever the file holds (usually a dict of tensors, or an mmengine checkpoint dict).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafeCheckpointError: the file references a global outside the allow-list.
        CheckpointError: the file is empty, truncated or not a torch checkpoint.
    """
    path = os.fspath(Path(path).expanduser())
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: '{path}'")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes)")
    reason = _not_a_checkpoint(path)
    if reason is not None:
        raise CheckpointError(
            f"'{path}' is not a torch checkpoint ({reason}); expected a .pth/.pt file written "
            "by torch.save, e.g. work_dirs/<config>/iter_*.pth"
        )
    try:  # the allow-list is registered globally below, for mmengine's own torch.load calls too
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            names = _unsafe_globals(path, error)
            if names != ["<unknown global>"]:
                raise UnsafeCheckpointError(path, names) from None
        raise CheckpointError(
            f"checkpoint '{path}' is not a readable torch checkpoint: {_unpickler_reason(error)}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt or truncated ({type(error).__name__}: {error})"
        ) from None


def _unpickler_reason(error: Exception) -> str:
    """What torch's weights-only unpickler objected to: its message puts advice first and the
    reason after "WeightsUnpickler error:"."""
    reason = str(error).rpartition("WeightsUnpickler error:")[2]
    return (reason.strip().splitlines() or [type(error).__name__])[0]


def _load_from_local(filename: str, map_location=None):
    return safe_torch_load(filename, map_location=map_location)


_load_from_local.__name__ = "load_from_local"  # mmengine logs the loader's name[10:]
CheckpointLoader.register_scheme(prefixes="", loader=_load_from_local, force=True)
torch.serialization.add_safe_globals(_SAFE_GLOBALS)
