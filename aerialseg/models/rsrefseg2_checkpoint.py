"""Convert a published RSRefSeg 2 model (``KyanChen/RSRefSeg2``: ``rrsisd.pth``, ``refsegrs.pth``,
``risbench.pth``) into a :class:`~aerialseg.models.ClipSAM2` checkpoint.

The published files hold the whole model in bf16 (``{'state_dict': ...}``, a bare dict, or a
DeepSpeed ``{'module': ...}``; a DDP ``module.`` prefix is stripped), read here with
``torch.load(weights_only=True)``. Keys are mapped by prefix (spec
``shared/reference/rsrefseg2.md`` §5); the peft suffixes (``.base_layer.``, ``.lora_A.default.``,
``.lora_B.default.``) stay as they are, because ClipSAM2 injects its LoRA with peft under the same
names:

=============================================================  ==================================
RSRefSeg 2                                                      ClipSAM2
=============================================================  ==================================
``backbone.model.image_encoder.base_model.model.``              ``sam.image_encoder.``
``backbone.model.sam_prompt_encoder.`` / ``sam_mask_decoder.``  ``sam.sam_prompt_encoder.`` / ...
``backbone.model.no_mem_embed``                                 ``sam.no_mem_embed``
``clip_vision_encoder.base_model.model.model.``                 ``vlm.vision.``
``clip_text_encoder.base_model.model.model.``                   ``vlm.text.``
``clip_text_encoder.base_model.model.logit_{scale,bias}``       ``vlm.logit_{scale,bias}``
``prompter.``                                                   ``prompter.`` (verbatim)
``decode_head.logit_{scale,bias}2``                             ``loss_contrastive.logit_*``
=============================================================  ==================================

Dropped on purpose, because they cannot change any output: the SigLIP vision attention-pooling
head ``...model.head.*`` with its LoRA (its pooled output is never read; ClipSAM2's towers do not
build it) and ``decode_head.logit_{scale,bias}1`` (no loss of the released configs reads them).
Any other key is refused with the list. Floating tensors are cast to fp32 (the bf16 values are
kept exactly: inference runs the bf16-rounded weights in fp32, as RSRefSeg 2's own test did).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from aerialseg.engine import CheckpointError, safe_torch_load
from aerialseg.models.checkpoint_keys import CheckpointMismatchError, check_state_dict

# (RSRefSeg 2 prefix, ClipSAM2 prefix), first match wins.
KEY_PREFIXES = (
    ("backbone.model.image_encoder.base_model.model.", "sam.image_encoder."),
    ("backbone.model.sam_prompt_encoder.", "sam.sam_prompt_encoder."),
    ("backbone.model.sam_mask_decoder.", "sam.sam_mask_decoder."),
    ("backbone.model.no_mem_embed", "sam.no_mem_embed"),
    ("clip_vision_encoder.base_model.model.model.", "vlm.vision."),
    ("clip_text_encoder.base_model.model.model.", "vlm.text."),
    ("clip_text_encoder.base_model.model.logit_scale", "vlm.logit_scale"),
    ("clip_text_encoder.base_model.model.logit_bias", "vlm.logit_bias"),
    ("prompter.", "prompter."),
    ("decode_head.logit_scale2", "loss_contrastive.logit_scale"),
    ("decode_head.logit_bias2", "loss_contrastive.logit_bias"),
)
DROPPED_PREFIXES = (
    "clip_vision_encoder.base_model.model.model.head.",
    "decode_head.logit_scale1",
    "decode_head.logit_bias1",
)
_SHOWN = 10


def read_rsrefseg2_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a published RSRefSeg 2 ``.pth`` (``module.`` prefix stripped).

    Raises:
        CheckpointError: the file is not a dict of tensors (bare or under ``'state_dict'``).
    """
    state = safe_torch_load(path, map_location="cpu")
    # mmengine checkpoints keep the model under 'state_dict', DeepSpeed model states under 'module'
    for wrapper in ("state_dict", "module"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"'{os.fspath(path)}' is not an RSRefSeg 2 model (expected a dict of tensors, bare "
            "or under 'state_dict' or 'module')"
        )
    tensors = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise CheckpointError(
                f"'{os.fspath(path)}': entry '{key}' is a {type(value).__name__}, not a tensor"
            )
        tensors[key.removeprefix("module.")] = value
    return tensors


def map_rsrefseg2_key(key: str) -> str | None:
    """ClipSAM2 name of an RSRefSeg 2 key; ``None`` for a key dropped on purpose.

    Raises:
        KeyError: the key belongs to no known part of RSRefSeg 2.
    """
    if key.startswith(DROPPED_PREFIXES):
        return None
    for source, target in KEY_PREFIXES:
        if key.startswith(source):
            rest = key[len(source) :]
            if source.endswith(".") or not rest:
                return target + rest
    raise KeyError(key)


def convert_rsrefseg2_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor] | None = None,
    source: str | os.PathLike = "<state dict>",
) -> dict[str, torch.Tensor]:
    """Map every RSRefSeg 2 tensor to its ClipSAM2 key, as fp32 (integer buffers unchanged).

    Args:
        state: the RSRefSeg 2 tensors (:func:`read_rsrefseg2_state`).
        expected: the target model's full state dict (``nn.Module.state_dict(model)``); when
            given, the result must have exactly its keys and shapes.
        source: the file, named in errors.

    Raises:
        CheckpointMismatchError: unknown keys, or (with ``expected``) missing keys, unexpected
            keys or shape mismatches, each with the list.
    """
    converted, unknown = {}, []
    for key, value in state.items():
        try:
            target = map_rsrefseg2_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if target is not None:
            converted[target] = value.float() if value.is_floating_point() else value
    if unknown:
        shown = ", ".join(sorted(unknown)[:_SHOWN])
        more = f", ... ({len(unknown) - _SHOWN} more)" if len(unknown) > _SHOWN else ""
        raise CheckpointMismatchError(
            f"'{os.fspath(source)}' has {len(unknown)} keys that belong to no part of RSRefSeg 2: "
            f"{shown}{more}. Is this an RSRefSeg 2 model (KyanChen/RSRefSeg2)?"
        )
    if expected is not None:
        check_state_dict(
            expected,
            converted,
            source,
            "the ClipSAM2 model of this config",
            "Check that the config's SigLIP/SAM 2.1 sizes and LoRA targets match the published "
            "model (SigLIP 2 so400m/16@512, SAM 2.1 Hiera-L, LoRA r16 as in "
            "configs/_base_/models/clipsam2.py)",
        )
    return converted


def write_converted_checkpoint(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, source: str | os.PathLike
) -> None:
    """Save ``{'state_dict': state, 'meta': ...}`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(converted_from=os.path.basename(os.fspath(source)), format="ClipSAM2 (RSRefSeg 2)")
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        torch.save(dict(state_dict=dict(state), meta=meta), staging)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def expected_state(config) -> dict[str, torch.Tensor]:
    """The full state dict (meta tensors: keys and shapes only) of the model of ``config``.

    The model is built on the ``meta`` device, so no weights are allocated or read: SigLIP from
    its folder's ``config.json`` (the folder is still needed for the tokenizer), SAM 2.1 without
    its checkpoint.
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from transformers import AutoConfig

    import aerialseg.models  # noqa: F401  (registers ClipSAM2)

    cfg = copy.deepcopy(config.model)
    folder = cfg.vlm.pop("pretrained", None)
    if folder is not None:
        cfg.vlm.config = AutoConfig.from_pretrained(folder, local_files_only=True).to_dict()
        cfg.setdefault("data_preprocessor", {})
        cfg.data_preprocessor.setdefault("vlm_path", folder)
    cfg.sam.checkpoint = None
    init_default_scope("mmseg")
    with torch.device("meta"):
        model = MODELS.build(cfg)
    return torch.nn.Module.state_dict(model)


def convert_rsrefseg2_file(
    src: str | os.PathLike, dst: str | os.PathLike, config=None
) -> dict[str, torch.Tensor]:
    """Read ``src``, convert (checked against ``config``'s model when given), write ``dst``.

    Returns:
        the converted state dict.
    """
    state = read_rsrefseg2_state(src)
    expected = expected_state(config) if config is not None else None
    converted = convert_rsrefseg2_state(state, expected, src)
    write_converted_checkpoint(converted, dst, src)
    return converted


def main(argv: list[str] | None = None) -> None:
    """``convert_rsrefseg2.py SRC.pth DST.pth [--config CONFIG] [--no-check]``."""
    import argparse

    from mmengine.config import Config

    parser = argparse.ArgumentParser(
        description="Convert a published RSRefSeg 2 model (KyanChen/RSRefSeg2 *.pth) into a "
        "ClipSAM2 checkpoint for configs/clipsam2/rsrefseg2_*.py."
    )
    parser.add_argument("src", help="the published .pth (e.g. rrsisd.pth)")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    parser.add_argument(
        "--config",
        default="configs/clipsam2/rsrefseg2_rrsisd.py",
        help="config whose model the result must match key for key (needs its SigLIP folder's "
        "tokenizer; no weights are read)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="map the keys without checking them against a model"
    )
    args = parser.parse_args(argv)
    config = None if args.no_check else Config.fromfile(args.config)
    converted = convert_rsrefseg2_file(args.src, args.dst, config)
    count = sum(value.numel() for value in converted.values())
    print(f"wrote {args.dst}: {len(converted)} tensors, {count:,} values (fp32)")
