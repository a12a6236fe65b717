"""Gemma 3 checkpoints in the hub layout: what vLLM, transformers 4.x and 5.x all read.

Published Gemma 3 checkpoints (``google/gemma-3-*-it``) name their tensors
``language_model.model.*``, ``vision_tower.vision_model.*`` and ``multi_modal_projector.*``, with
``language_model.lm_head.weight`` tied to the embedding and left out. transformers 5 loads them
through its conversion mapping, but saves a model it built itself as ``vision_tower.encoder.*`` /
``vision_tower.embeddings.*`` (its SigLIP tower lost the ``vision_model`` level), and one it loaded
as ``model.language_model.*`` / ``model.vision_tower.*`` and so on. vLLM's Gemma 3 loader
(``gemma3_mm.py``, checked against vLLM 0.33.0) renames only the ``model.*`` / ``lm_head.*``
prefixes of transformers ≥ 4.52 and then needs ``vision_tower.vision_model.*``: it refuses
``vision_tower.encoder.*`` ("There is no module or parameter named ..."). Writing the hub layout
avoids all of that: every reader accepts it unchanged.

``config.json`` of a merge is the base model's own file (only its dtype updated): merging an
adapter changes no architecture, and a hub config keeps the ``rope_scaling`` / ``rope_theta``
fields that transformers 4.x reads (transformers 5 writes ``rope_parameters`` instead, which 4.x
would ignore and fall back to unscaled RoPE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aerialformats.atomic import atomic_write_text

HUB_PREFIXES = (
    "language_model.model.",
    "language_model.lm_head.",
    "vision_tower.vision_model.",
    "multi_modal_projector.",
)

# (prefix found in a state dict or checkpoint, hub prefix); first match wins.
_TO_HUB = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("language_model.model.", "language_model.model."),
    ("language_model.lm_head.", "language_model.lm_head."),
    ("language_model.", "language_model.model."),
    ("vision_tower.vision_model.", "vision_tower.vision_model."),
    ("vision_tower.", "vision_tower.vision_model."),
    ("multi_modal_projector.", "multi_modal_projector."),
)


class CheckpointLayoutError(ValueError):
    """A tensor name that is not part of a Gemma 3 image-text checkpoint."""


def hub_gemma3_key(key: str) -> str:
    """The hub-layout name of a Gemma 3 tensor saved under any transformers 4.x/5.x layout."""
    for prefix, hub in _TO_HUB:
        if key.startswith(prefix):
            return hub + key[len(prefix) :]
    raise CheckpointLayoutError(f"{key}: not a tensor of a Gemma 3 image-text model")


def hub_state_dict(model) -> dict[str, Any]:
    """``model.state_dict()`` under hub names, without the ``lm_head`` tied to the embedding."""
    state = model.state_dict()
    embedding = model.get_input_embeddings().weight
    hub: dict[str, Any] = {}
    for key, tensor in state.items():
        name = hub_gemma3_key(key)
        if name == "language_model.lm_head.weight" and tensor.data_ptr() == embedding.data_ptr():
            continue  # tied: hub checkpoints store the embedding only
        if name in hub:
            raise CheckpointLayoutError(f"{key}: two tensors map to {name}")
        hub[name] = tensor
    return hub


def checkpoint_keys(folder: str | Path) -> list[str]:
    """The tensor names of a safetensors checkpoint folder (sharded or not)."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    single = folder / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{folder}: no model.safetensors(.index.json)")
    with safe_open(single, "pt") as stream:
        return sorted(stream.keys())


def save_hub_checkpoint(model, out_dir: str | Path, base: str, dtype: str) -> Path:
    """Save ``model`` (a merged Gemma 3) in the hub layout with the base model's config.

    Checks the written names afterwards: a name outside the hub layout is an error.
    """
    from transformers.utils import cached_file

    out_dir = Path(out_dir)
    model.save_pretrained(
        out_dir,
        state_dict=hub_state_dict(model),
        max_shard_size="2GB",
        save_original_format=False,  # the names above are final: no reverse conversion
    )
    config = json.loads(Path(cached_file(base, "config.json")).read_text(encoding="utf-8"))
    for section in (config, config.get("text_config") or {}, config.get("vision_config") or {}):
        for field in ("torch_dtype", "dtype"):
            if field in section:
                section[field] = dtype
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    stray = [key for key in checkpoint_keys(out_dir) if not key.startswith(HUB_PREFIXES)]
    if stray:
        raise CheckpointLayoutError(f"{out_dir}: tensors outside the hub layout: {stray[:5]}")
    return out_dir
