"""Run configuration of ``llm enhance`` / ``llm batch``: one YAML file per backend.

The file has one section per concern; unknown keys are errors that name the key, so a typo never
silently falls back to a default::

    backend:   {base_url, model, api_key_env, structured_output, schema_array_bounds, timeout_s}
    sampling:  {temperature, top_p, max_completion_tokens, max_tokens, reasoning_effort, seed,
                extra_body}
    queue:     {concurrency, max_transport_retries, backoff_initial_s, backoff_max_s,
                max_resamples, sample_budget, abort_after_failures}
    render:    {image_size, line_width, crop_margin, crop_min_side, overlay_alpha,
                min_component_pixels, image_format, jpeg_quality}
    validation:{num_unique, min_words, max_words, max_analysis_chars, forbidden_patterns}
    pricing:   {input_per_million, output_per_million, cached_input_per_million, batch_discount}
               (optional: without it ``llm report`` prints the cost as unknown, never $0)

The API key is never part of the file: ``backend.api_key_env`` names the environment variable that
holds it. Ready-made files for OpenAI o3, vLLM serving a (fine-tuned) Gemma 3 and
``transformers serve`` live in ``llm/configs/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_DIR = Path(__file__).parent / "configs"

# Words that give away the visual prompt (outline, tint, crop) or refer to the marking itself.
# "in the image" is allowed: the rule-based semantic expressions ("all water in the image") use it.
DEFAULT_FORBIDDEN_PATTERNS = (
    r"\bbox(es)?\b",
    r"\bbounding\b",
    r"\bmask(s|ed|ing)?\b",
    r"\boutlin(e|es|ed|ing)\b",
    r"\bhighlight(s|ed|ing)?\b",
    r"\boverlay(s|ed)?\b",
    r"\btint(s|ed)?\b",
    r"\bmarked\b",
    r"\bmarkings?\b",
    r"\bred (rectangle|frame|border|square|line|region|shading)s?\b",
    r"\b(first|second|both|two) (image|images|picture|pictures)\b",
    r"\b(the|this) (crop|close ?up|closeup)\b",
    r"\bcropped\b",
)


class ConfigSection(BaseModel):
    """A config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(ConfigSection):
    """Where requests go. ``base_url`` None means OpenAI's public API."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # "json_schema": send the strict output schema (OpenAI, vLLM); "none": rely on the prompt only
    # (servers that ignore or reject response_format, e.g. `transformers serve`).
    structured_output: Literal["json_schema", "none"] = "json_schema"
    # minItems/maxItems in the schema; turn off for servers whose grammar engine rejects them.
    schema_array_bounds: bool = True
    timeout_s: float = Field(120.0, gt=0)


class SamplingConfig(ConfigSection):
    """Sampling parameters; ``None`` values are not sent. Sample k of a target uses ``seed + k``."""

    temperature: float | None = None
    top_p: float | None = None
    max_completion_tokens: int | None = 4096
    max_tokens: int | None = None
    reasoning_effort: str | None = None
    seed: int | None = 0
    # Server-specific fields sent verbatim (e.g. vLLM's ``top_k``, ``repetition_penalty``).
    extra_body: dict[str, Any] = Field(default_factory=dict)


class QueueConfig(ConfigSection):
    concurrency: int = Field(32, ge=1)
    # Attempts after the first for 429, 5xx, timeouts and dropped connections.
    max_transport_retries: int = Field(6, ge=0)
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    # New samples (next seed) after an answer fails validation, per target and run.
    max_resamples: int = Field(2, ge=0)
    # Samples per target over all runs: a re-run re-validates the cached ones (free) and asks for
    # new ones (next seeds) until this many were tried.
    sample_budget: int = Field(6, ge=1)
    # Stop the run when this many targets in a row were lost to transport errors (server down).
    abort_after_failures: int = Field(20, ge=1)


class RenderConfig(ConfigSection):
    """The two images of a request (see :mod:`llm.render`)."""

    image_size: int = Field(480, ge=16)
    line_width: int = Field(3, ge=1)
    crop_margin: float = Field(1.6, ge=1.0)
    crop_min_side: int = Field(96, ge=8)
    overlay_alpha: float = Field(0.35, gt=0, lt=1)
    min_component_pixels: int = Field(10, ge=1)
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = Field(92, ge=50, le=100)


class ValidationConfig(ConfigSection):
    num_unique: int = Field(2, ge=1)
    min_words: int = Field(3, ge=1)
    max_words: int = Field(40, ge=1)
    max_analysis_chars: int = Field(4000, ge=1)
    forbidden_patterns: tuple[str, ...] = DEFAULT_FORBIDDEN_PATTERNS


class PricingConfig(ConfigSection):
    """USD per million tokens, for ``llm report``'s cost. Input and output prices are required:
    a price table without them is an error, not a free run."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    # Prompt tokens the provider served from its prompt cache (``prompt_tokens_details.
    # cached_tokens``); None: billed at the full input price (never under-counts).
    cached_input_per_million: float | None = Field(None, ge=0)
    batch_discount: float = Field(0.5, ge=0, le=1)


class EnhanceConfig(ConfigSection):
    backend: BackendConfig
    sampling: SamplingConfig = SamplingConfig()
    queue: QueueConfig = QueueConfig()
    render: RenderConfig = RenderConfig()
    validation: ValidationConfig = ValidationConfig()
    # None: the cost is unknown (a self-hosted server has no list price; give your own).
    pricing: PricingConfig | None = None


class ConfigError(ValueError):
    """A configuration file is missing or has an invalid/unknown field (named in the message)."""


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a bare name (``o3``) resolves to ``llm/configs/<name>.yaml``."""
    path = Path(path)
    if not path.exists() and not path.suffix and (CONFIG_DIR / f"{path}.yaml").is_file():
        path = CONFIG_DIR / f"{path}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _format_errors(path: Path | str, exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    ]
    return f"{path}: invalid config: " + "; ".join(problems)


def parse_config(model: type[BaseModel], data: dict, source: str = "<config>") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_enhance_config(path: str | os.PathLike, **overrides: Any) -> EnhanceConfig:
    """Load an :class:`EnhanceConfig`; ``overrides`` are ``section={key: value}`` dicts."""
    data = load_yaml(path)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return parse_config(EnhanceConfig, data, str(path))
