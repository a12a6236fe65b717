"""Pipeline configuration: dataclasses with the reference defaults, loaded from YAML.

Every threshold of every stage lives here (the original hard-coded most of them in the scripts).
A YAML file only lists what differs from these defaults; unknown keys are errors that name the
key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = [
    "DEFAULT_CONFIG",
    "ColorConfig",
    "ConfigError",
    "ExportConfig",
    "ExpressionsConfig",
    "HistoricConfig",
    "ISAIDConfig",
    "InstanceRule",
    "LoveDAConfig",
    "PipelineConfig",
    "RulesConfig",
    "SyntheticConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "fingerprint",
    "load_config",
]

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
SPLITS = ("train", "val")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


@dataclass
class SyntheticConfig:
    """Procedural sources written in the real iSAID and LoveDA layouts (see ``synthetic``)."""

    enabled: bool = False
    isaid_images: dict[str, int] = field(default_factory=lambda: {"train": 3, "val": 1})
    isaid_width: int = 1400
    isaid_height: int = 1200
    isaid_instances: int = 150
    row_fraction: float = 0.6
    loveda_tiles: dict[str, int] = field(default_factory=lambda: {"train": 3, "val": 1})
    loveda_size: int = 1024


@dataclass
class ISAIDConfig:
    """iSAID -> patches. ``root`` holds ``{split}/Annotations/instances_{split}.json`` and
    ``{split}/images/images/<file_name>``; empty means ``<work_dir>/sources/isaid``."""

    enabled: bool = True
    root: str = ""
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    num_images: int | None = None
    image_id_range: list[int] | None = None
    patch_size: int = 480
    stride: int = 384
    black_value: int = 10
    max_black_fraction: float = 0.5
    min_visible_ratio: float = 0.5
    min_visible_pixels: int = 500
    complete_ratio: float = 0.99
    png_compression: int = 0


@dataclass
class InstanceRule:
    """Pseudo-instances of one LoveDA class: morphology radii, then component filters."""

    open_radius: int = 1
    close_radius: int = 2
    min_area: int = 50
    max_area: int | None = 50_000
    min_solidity: float | None = 0.3
    aspect_range: list[float] | None = field(default_factory=lambda: [0.1, 10.0])


@dataclass
class LoveDAConfig:
    """LoveDA -> patches. ``root`` holds ``{Train,Val}/{Urban,Rural}/{images_png,masks_png}``;
    empty means ``<work_dir>/sources/LoveDA``."""

    enabled: bool = True
    root: str = ""
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    domains: list[str] = field(default_factory=lambda: ["Urban", "Rural"])
    num_images: int | None = None
    expected_size: int | None = 1024
    patch_size: int = 480
    tile_mode: str = "resize"
    building: InstanceRule = field(default_factory=InstanceRule)
    water: InstanceRule = field(
        default_factory=lambda: InstanceRule(
            open_radius=1,
            close_radius=3,
            min_area=100,
            max_area=None,
            min_solidity=None,
            aspect_range=None,
        )
    )
    region_min_pixels: int = 100
    png_compression: int = 0


@dataclass
class ColorConfig:
    """HSV colour naming (S and V on a 0-100 scale, H on OpenCV's 0-179).

    A pixel is achromatic when S < ``achromatic_saturation`` or V < ``dark_value`` (the hue of
    near-black pixels is noise: a black car would otherwise read as blue or purple); achromatic
    pixels are light when V >= ``light_value``, else dark.
    """

    min_pixels: int = 100
    achromatic_saturation: float = 25.0
    dark_value: float = 20.0
    light_value: float = 54.0
    dominance: float = 0.7
    hue_dominance: float = 0.6
    possible_share: float = 0.25


@dataclass
class RulesConfig:
    grid_border_fraction: float = 0.1
    extreme_margin_fraction: float = 0.05
    size_ratio: float = 1.5
    relation_base_distance: float = 150.0
    relation_borderline_degrees: float = 15.0
    relation_possible_slack: float = 1.25
    cluster_eps: float = 40.0
    cluster_min_samples: int = 2
    cluster_max_size: int = 8
    # A cut-off instance is still *visibly present* (it blocks the colour words and cluster
    # counts it would make ambiguous) when at least this share of it, or this many pixels, show.
    visible_cutoff_ratio: float = 0.4
    visible_cutoff_pixels: int = 100
    color: ColorConfig = field(default_factory=ColorConfig)


@dataclass
class ExpressionsConfig:
    max_per_target: int | None = 10


@dataclass
class HistoricConfig:
    enabled: bool = True
    fraction: float = 0.05
    modes: list[str] = field(default_factory=lambda: ["bw", "bw_grain", "sepia"])
    include_in_export: bool = False
    png_compression: int = 0


@dataclass
class ExportConfig:
    formats: list[str] = field(default_factory=lambda: ["xml", "parquet", "refcoco"])
    patches_per_row_group: int = 64
    # Patch PNGs inside the chain are stored uncompressed (level 0: 6x faster to write and read
    # than level 1, docs/benchmarks.md); the released images are compressed at this level (1:
    # 4.7x smaller than raw), or hard-linked as they are with null.
    png_compression: int | None = 1


@dataclass
class PipelineConfig:
    """The whole chain. ``workers``, ``chunksize`` and ``progress`` never change the outputs."""

    work_dir: str = "work_dirs/datagen"
    seed: int = 0
    workers: int = 1
    chunksize: int | None = None
    progress: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    isaid: ISAIDConfig = field(default_factory=ISAIDConfig)
    loveda: LoveDAConfig = field(default_factory=LoveDAConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    expressions: ExpressionsConfig = field(default_factory=ExpressionsConfig)
    historic: HistoricConfig = field(default_factory=HistoricConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir)

    def isaid_root(self) -> Path:
        return Path(self.isaid.root) if self.isaid.root else self.work_path / "sources" / "isaid"

    def loveda_root(self) -> Path:
        return Path(self.loveda.root) if self.loveda.root else self.work_path / "sources" / "LoveDA"


def validate(cfg: PipelineConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    checks = [
        (cfg.workers >= 1, "workers", "must be >= 1"),
        (cfg.chunksize is None or cfg.chunksize >= 1, "chunksize", "must be >= 1"),
        (0 < cfg.isaid.stride <= cfg.isaid.patch_size, "isaid.stride", "must be in (0, patch]"),
        (cfg.isaid.patch_size >= 32, "isaid.patch_size", "must be >= 32"),
        (0 <= cfg.isaid.max_black_fraction <= 1, "isaid.max_black_fraction", "must be in [0, 1]"),
        (cfg.loveda.tile_mode in ("resize", "crop"), "loveda.tile_mode", "is resize or crop"),
        (0 <= cfg.historic.fraction <= 1, "historic.fraction", "must be in [0, 1]"),
        (
            set(cfg.historic.modes) <= {"bw", "bw_grain", "sepia"} and bool(cfg.historic.modes),
            "historic.modes",
            "must be a non-empty subset of bw, bw_grain, sepia",
        ),
        (
            set(cfg.export.formats) <= {"xml", "parquet", "refcoco"},
            "export.formats",
            "must be a subset of xml, parquet, refcoco",
        ),
        (
            cfg.expressions.max_per_target is None or cfg.expressions.max_per_target >= 1,
            "expressions.max_per_target",
            "must be >= 1 or null",
        ),
        (cfg.rules.cluster_min_samples >= 2, "rules.cluster_min_samples", "must be >= 2"),
        (
            cfg.isaid.image_id_range is None or len(cfg.isaid.image_id_range) == 2,
            "isaid.image_id_range",
            "must be [first, last] or null",
        ),
        (
            set(cfg.loveda.domains) <= {"Urban", "Rural"},
            "loveda.domains",
            "must be a subset of Urban, Rural",
        ),
        (cfg.loveda.patch_size >= 32, "loveda.patch_size", "must be >= 32"),
        (0 <= cfg.rules.visible_cutoff_ratio <= 1, "rules.visible_cutoff_ratio", "in [0, 1]"),
    ]
    for key, level in (
        ("isaid.png_compression", cfg.isaid.png_compression),
        ("loveda.png_compression", cfg.loveda.png_compression),
        ("historic.png_compression", cfg.historic.png_compression),
        ("export.png_compression", cfg.export.png_compression),
    ):
        checks.append((level is None or 0 <= level <= 9, key, "must be a zlib level 0..9"))
    for split_key, splits in (
        ("isaid.splits", cfg.isaid.splits),
        ("loveda.splits", cfg.loveda.splits),
    ):
        checks.append((set(splits) <= set(SPLITS), split_key, f"must be a subset of {SPLITS}"))
    for key, counts in (
        ("synthetic.isaid_images", cfg.synthetic.isaid_images),
        ("synthetic.loveda_tiles", cfg.synthetic.loveda_tiles),
    ):
        checks.append((set(counts) <= set(SPLITS), key, f"keys must be among {SPLITS}"))
    for ok, key, message in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' {message}")


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass


def _convert(value, annotation, key: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _convert(value, options[0], key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {annotation}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}' (known keys: {', '.join(sorted(names))})"
        )
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def config_from_dict(data: dict) -> PipelineConfig:
    """Build a validated config from a (possibly partial) nested dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    return _build(PipelineConfig, data)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(text))
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Read a YAML config (the packaged demo config when ``path`` is None) plus overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-serialisable parts (dataclasses are converted)."""
    payload = [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
