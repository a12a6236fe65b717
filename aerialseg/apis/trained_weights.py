"""Loading a trained checkpoint into a model with strict key matching.

mmengine's ``load_checkpoint(strict=False)`` (what ``Runner`` uses for ``load_from``) only
*warns* about missing and unexpected keys, so evaluating a SAM weights file instead of a trained
model used to write a full results table. Here every key of the checkpoint must be one of the
model's, and every model key must be in the checkpoint, except the ones the model declares as
frozen pretrained
tensors (rebuilt from the pretrained files, so training checkpoints leave them out):

* a segmentor declares them with a ``frozen_state_dict_keys()`` method returning the set of
  ``state_dict`` keys that a checkpoint may omit (ClipSAM: the frozen SigLIP/SAM tensors);
  without it, all keys are required;
* a mismatch raises :class:`~aerialseg.models.checkpoint_keys.CheckpointMismatchError` listing the
  missing, unexpected and reshaped keys, grouped by module so that thousands of keys stay readable;
* ``allow_partial=True`` (``--allow-partial``) loads whatever matches and logs the rest instead.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping

import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from aerialseg.engine import CheckpointError, safe_torch_load
from aerialseg.models.checkpoint_keys import CheckpointMismatchError, reshaped_tensors

_PREFIXES = ("module.", "_orig_mod.")  # DDP/FSDP wrappers and torch.compile
_SHOWN = 6
_KNOWN_LAYOUTS = {
    ("image_encoder", "mask_decoder", "prompt_encoder"): "an official SAM checkpoint",
    ("text_model", "vision_model"): "a Hugging Face SigLIP state dict",
}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a training checkpoint (or of a plain state dict file).

    Raises:
        CheckpointError: the file holds something else than tensors by name.
    """
    state = safe_torch_load(path, map_location="cpu")
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"'{os.fspath(path)}' holds a {type(state).__name__}, not a checkpoint "
            "(a dict with a 'state_dict' of tensors)"
        )
    meta = state.get("meta") if isinstance(state.get("meta"), Mapping) else {}
    tensors = state.get("state_dict", state)
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"'{os.fspath(path)}': 'state_dict' is not a dict of tensors")
    cleaned = {}
    for key, value in tensors.items():
        if not torch.is_tensor(value):
            raise CheckpointError(
                f"'{os.fspath(path)}' is not a model checkpoint: entry '{key}' is a "
                f"{type(value).__name__}, not a tensor"
            )
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned, dict(meta)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if is_model_wrapper(model) else model


def _grouped(keys: list[str]) -> str:
    """``'prompter.* (12), sam.mask_decoder.* (40): prompter.conv.weight, ...'``."""
    groups = Counter(".".join(key.split(".")[:2]) + ".*" if "." in key else key for key in keys)
    summary = ", ".join(f"{group} ({count})" for group, count in groups.most_common())
    examples = ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")
    return f"{summary}; e.g. {examples}"


def _layout_hint(found: Mapping[str, torch.Tensor]) -> str:
    top = tuple(sorted({key.split(".")[0] for key in found}))
    for layout, name in _KNOWN_LAYOUTS.items():
        if top == layout:
            return (
                f" The file looks like {name}, a pretrained input of the model, not a checkpoint "
                "trained with it (work_dirs/<config>/iter_*.pth)."
            )
    return ""


def optional_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys ``model`` declares a checkpoint may leave out (frozen pretrained tensors)."""
    declare = getattr(model, "frozen_state_dict_keys", None)
    return set(declare()) if callable(declare) else set()


def check_trained_state(model: torch.nn.Module, found: Mapping[str, torch.Tensor]) -> list[str]:
    """The problems of loading ``found`` into ``model`` (empty when it matches strictly)."""
    model = _unwrap(model)
    # nn.Module's own state_dict: the full set of tensors, frozen ones included.
    expected = torch.nn.Module.state_dict(model)
    required = set(expected) - optional_keys(model)
    missing = sorted(required - set(found))
    unexpected = sorted(set(found) - set(expected))
    reshaped = reshaped_tensors(expected, found)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_grouped(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_grouped(unexpected)}")
    if reshaped:
        problems.append(
            f"{len(reshaped)} tensors with another shape: {', '.join(reshaped[:_SHOWN])}"
        )
    return problems


def load_trained_weights(
    model: torch.nn.Module,
    checkpoint: str | os.PathLike,
    allow_partial: bool = False,
    state: tuple[dict, dict] | None = None,
) -> dict:
    """Load a trained checkpoint into ``model`` (strictly unless ``allow_partial``).

    Args:
        model: the built model (a DDP/FSDP wrapper is unwrapped).
        checkpoint: the checkpoint path (named in errors).
        allow_partial: load the matching tensors and only log the mismatch.
        state: ``read_checkpoint(checkpoint)``, when the caller has already read it.

    Returns:
        the checkpoint's ``meta`` dict.

    Raises:
        CheckpointMismatchError: keys are missing, unexpected or of another shape (the message
            lists them and says how to get past it).
        CheckpointError: the file is not a torch checkpoint of tensors.
    """
    found, meta = state if state is not None else read_checkpoint(checkpoint)
    problems = check_trained_state(model, found)
    target = _unwrap(model)
    if problems:
        message = (
            f"checkpoint '{os.fspath(checkpoint)}' does not match the model of this config: "
            + "; ".join(problems)
            + "."
            + _layout_hint(found)
        )
        if not allow_partial:
            raise CheckpointMismatchError(
                message + " Use --allow-partial (allow_partial=True) to load only what matches."
            )
        print_log(
            message + " Loading what matches (--allow-partial).",
            logger="current",
            level=logging.WARNING,
        )
        expected = torch.nn.Module.state_dict(target)
        found = {
            key: value
            for key, value in found.items()
            if key in expected and tuple(value.shape) == tuple(expected[key].shape)
        }
    target.load_state_dict(found, strict=False)
    return meta
