"""Strict comparison of a checkpoint's tensors with the tensors a module expects.

``nn.Module.load_state_dict(strict=True)`` stops at the first problem with a long list of names.
Users loading a SAM ``.pth`` or a SigLIP folder need to know *which file* is wrong and *how*
(another model size, another layout, a truncated download), so the mismatch is reported once, with
the file, counts, the first offending keys and shapes, and a hint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from aerialseg.engine import CheckpointError, safe_torch_load

_SHOWN_KEYS = 8


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or tensor shapes do not match the model built from the config."""


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return shown + (f", ... ({more} more)" if more > 0 else "")


def reshaped_tensors(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> list[str]:
    """``"name (checkpoint (shape), model (shape))"`` for each shared key whose shapes differ,
    sorted by name."""
    return [
        f"{key} (checkpoint {tuple(found[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(found))
        if tuple(found[key].shape) != tuple(expected[key].shape)
    ]


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    found: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    what: str,
    hint: str = "",
) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``found`` has exactly the keys and shapes of
    ``expected``.

    Args:
        expected: the module's ``state_dict()`` (name -> tensor).
        found: the checkpoint's tensors (name -> tensor).
        source: the checkpoint path, named in the message.
        what: what the checkpoint should be, e.g. ``"SAM vit_b"``.
        hint: one sentence on the likely cause, appended to the message.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = reshaped_tensors(expected, found)
    if not (missing or unexpected or wrong_shape):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_preview(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensors with another shape: {_preview(wrong_shape)}")
    message = f"checkpoint '{os.fspath(source)}' does not match {what}: " + "; ".join(problems)
    raise CheckpointMismatchError(message + (f". {hint}" if hint else ""))


def load_official_state(
    path: str | os.PathLike, what: str, layout_hint: str = ""
) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint file (name -> tensor), read safely.

    A training checkpoint that wraps the official layout under ``"model"`` is unwrapped.

    Args:
        path: the checkpoint file.
        what: the model family, named in the error (``"SAM"``, ``"SAM 2.1"``).
        layout_hint: the expected layout, appended to the error in parentheses.

    Raises:
        TypeError: the file does not hold a state dict of tensors.
    """
    state = safe_torch_load(path, map_location="cpu")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        suffix = f" ({layout_hint})" if layout_hint else ""
        raise TypeError(f"{what} checkpoint '{path}' is not a state dict of tensors{suffix}")
    return state
