"""Disk cache of frozen image-tower outputs, reused across epochs and runs.

When an image tower (SAM's image encoder, SigLIP's vision tower) is frozen and has no LoRA, its
output depends only on its weights and on the exact pixels it receives. Training then recomputes
the same features every epoch; this cache computes them once and reads them back afterwards.

Keys are content addresses: SHA-256 of the tower's weights (every tensor of its state dict), the
autocast dtype, and the bytes of one sample's input tensor (which already reflects every
preprocessing step: resize, padding, normalisation). Any change of weights or preprocessing
therefore gives new keys and a recomputation; nothing stale can be read by mistake.

Layout (safe to share between runs and processes: every file is written atomically, and two
writers of one key write the same bytes)::

    <dir>/AERIALSEG_FEATURE_CACHE.json          format marker (refuses foreign folders)
    <dir>/<tower>-<weights sha256[:16]>/TOWER.json
    <dir>/<tower>-<weights sha256[:16]>/<key[:2]>/<key>.safetensors

Entries are safetensors files (no pickle) holding one tensor, ``features``, and metadata that
repeats the key and weights hash; a file whose metadata disagrees with its name or folder is an
error (a stale or foreign cache), never silently used.

It does not apply when the tower trains (LoRA or ``trainable``: its output changes every step)
and gains nothing under random image augmentation (every epoch brings new pixels, so new keys).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from aerialformats.atomic import atomic_write_bytes, atomic_write_json

CACHE_FORMAT = "aerialseg-feature-cache"
CACHE_VERSION = 1
MARKER = "AERIALSEG_FEATURE_CACHE.json"
TOWER_FILE = "TOWER.json"


class FeatureCacheError(RuntimeError):
    """A cache folder that is foreign, of another format version, or holds stale entries."""


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over every state-dict tensor of ``module`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _input_key(weights: str, pixels: torch.Tensor) -> str:
    """Content key of one sample's input tensor (C x H x W) for a tower with these weights."""
    pixels = pixels.detach().cpu().contiguous()
    autocast = (
        str(torch.get_autocast_dtype(pixels.device.type))
        if torch.is_autocast_enabled(pixels.device.type)
        else "none"
    )
    digest = hashlib.sha256(f"{weights}|{pixels.dtype}|{tuple(pixels.shape)}|{autocast}|".encode())
    digest.update(pixels.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FrozenFeatureCache:
    """Content-addressed disk cache of frozen towers' outputs.

    Args:
        cache_dir: the cache folder (created; an existing non-empty folder must be a cache).
        towers: ``{name: module}``, the frozen modules whose weights the features depend on.

    Raises:
        FeatureCacheError: ``cache_dir`` holds something else or another format version.
        ValueError: a tower has a parameter that trains.
    """

    def __init__(self, cache_dir: str | os.PathLike, towers: Mapping[str, nn.Module]):
        self.root = Path(cache_dir)
        for name, module in towers.items():
            training = [n for n, p in module.named_parameters() if p.requires_grad]
            if training:
                raise ValueError(
                    f"feature cache: tower '{name}' has parameters that train ({training[0]}, "
                    f"... {len(training)} in all: LoRA or 'trainable'), so its features change "
                    "every step; leave it out of feature_cache.towers"
                )
        self.towers = dict(towers)
        self._fingerprints: dict[str, tuple[tuple, str]] = {}
        self.hits = self.misses = 0
        self._check_root()

    # ------------------------------------------------------------------------------- validation
    def _check_root(self) -> None:
        marker = self.root / MARKER
        if self.root.exists() and not self.root.is_dir():
            raise FeatureCacheError(f"feature cache '{self.root}' is a file, not a folder")
        if marker.is_file():
            try:
                content = json.loads(marker.read_text())
            except (OSError, ValueError) as error:
                raise FeatureCacheError(
                    f"feature cache marker '{marker}' is unreadable: {error}"
                ) from None
            if content != dict(format=CACHE_FORMAT, version=CACHE_VERSION):
                raise FeatureCacheError(
                    f"'{self.root}' is a feature cache of another format or version ({content}); "
                    f"this code writes version {CACHE_VERSION}. Delete it or choose another folder"
                )
            return
        if self.root.is_dir() and any(self.root.iterdir()):
            raise FeatureCacheError(
                f"'{self.root}' is not empty and is not an AerialSeg feature cache (no {MARKER}); "
                "choose an empty or new folder for feature_cache.dir"
            )
        atomic_write_json(marker, dict(format=CACHE_FORMAT, version=CACHE_VERSION))

    def fingerprint(self, name: str) -> str:
        """The weights hash of tower ``name``, recomputed whenever a parameter or buffer changed
        (tensor versions count in-place writes such as ``load_state_dict``)."""
        module = self.towers[name]
        state = tuple((t.data_ptr(), t._version) for t in module.state_dict().values())
        known = self._fingerprints.get(name)
        if known is None or known[0] != state:
            known = (state, weights_fingerprint(module))
            self._fingerprints[name] = known
        return known[1]

    def _tower_dir(self, name: str, weights: str) -> Path:
        folder = self.root / f"{name}-{weights[:16]}"
        description = dict(
            format=CACHE_FORMAT,
            tower=name,
            module=type(self.towers[name]).__name__,
            weights_sha256=weights,
        )
        info = folder / TOWER_FILE
        if info.is_file():
            recorded = json.loads(info.read_text())
            if recorded != description:
                raise FeatureCacheError(
                    f"feature cache folder '{folder}' was written for other weights or another "
                    f"module ({recorded.get('module')}, weights {recorded.get('weights_sha256')}); "
                    "it is stale or foreign: delete it"
                )
        else:
            atomic_write_json(info, description, indent=1)
        return folder

    # -------------------------------------------------------------------------------- read/write
    def _read(self, path: Path, key: str, weights: str) -> torch.Tensor:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("key") != key or metadata.get("weights_sha256") != weights:
            raise FeatureCacheError(
                f"feature cache entry '{path}' does not belong to its key (it records key "
                f"{metadata.get('key')}, weights {metadata.get('weights_sha256')}): the cache is "
                "stale or was copied together from other runs; delete it"
            )
        return load_safetensors(path.read_bytes())["features"]

    def _write(self, path: Path, key: str, weights: str, features: torch.Tensor) -> None:
        data = save_safetensors(
            {"features": features.detach().cpu().contiguous()},
            metadata=dict(format=CACHE_FORMAT, key=key, weights_sha256=weights),
        )
        atomic_write_bytes(path, data)

    def encode(
        self, name: str, encoder: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor
    ) -> torch.Tensor:
        """``encoder(pixels)`` (B x ... -> B x ...), read from the cache where possible.

        Samples are keyed one by one, so batches composed differently in each epoch still hit;
        the missing samples are encoded together in one call and stored.
        """
        weights = self.fingerprint(name)
        folder = self._tower_dir(name, weights)
        keys = [_input_key(weights, sample) for sample in pixels]
        paths = [folder / key[:2] / f"{key}.safetensors" for key in keys]
        features: list[torch.Tensor | None] = [
            self._read(path, key, weights) if path.is_file() else None
            for path, key in zip(paths, keys)
        ]
        missing = [index for index, value in enumerate(features) if value is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad():
                computed = encoder(pixels[missing])
            for index, value in zip(missing, computed):
                self._write(paths[index], keys[index], weights, value)
                features[index] = value
        return torch.stack([value.to(pixels.device) for value in features])

    def encode_all(
        self, encoders: Mapping[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """``{name: (encoder, pixels)}`` -> ``{name: features}``; cached towers go through
        :meth:`encode`, the others run directly."""
        return {
            name: self.encode(name, encode, pixels) if name in self.towers else encode(pixels)
            for name, (encode, pixels) in encoders.items()
        }


def build_feature_cache(
    cfg: Mapping | None, towers: Mapping[str, nn.Module]
) -> FrozenFeatureCache | None:
    """A :class:`FrozenFeatureCache` from ``dict(dir, towers=[names])`` (all towers by default);
    ``None`` when ``cfg`` is empty."""
    if not cfg:
        return None
    cfg = dict(cfg)
    unknown = set(cfg) - {"dir", "towers"}
    if unknown or "dir" not in cfg:
        raise ValueError(f"feature_cache takes keys 'dir' and 'towers', got {sorted(cfg)}")
    names = list(cfg.get("towers", towers))
    wrong = [name for name in names if name not in towers]
    if wrong:
        raise ValueError(f"feature_cache.towers {wrong} unknown; expected some of {list(towers)}")
    return FrozenFeatureCache(cfg["dir"], {name: towers[name] for name in names})
