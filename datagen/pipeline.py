"""The whole chain, stage by stage, from one config (``python -m datagen run``).

Stages run in order, each resumable on its own: rerunning after a kill skips finished stages and
finished units inside the interrupted one. Stages whose source is disabled in the config are
skipped (``synthetic`` runs only when ``synthetic.enabled``).
"""

from __future__ import annotations

from collections.abc import Callable

from datagen.config import PipelineConfig
from datagen.export import run_export
from datagen.expressions import run_expressions
from datagen.historic import run_historic
from datagen.isaid_patches import extract_isaid_patches
from datagen.loveda_patches import extract_loveda_patches
from datagen.rules import run_rules
from datagen.synthetic import generate_sources

__all__ = ["STAGES", "run_pipeline", "stage_enabled"]

STAGES: dict[str, Callable[[PipelineConfig, bool], dict]] = {
    "synthetic": generate_sources,
    "isaid": extract_isaid_patches,
    "loveda": extract_loveda_patches,
    "rules": run_rules,
    "expressions": run_expressions,
    "historic": run_historic,
    "export": run_export,
}


def stage_enabled(cfg: PipelineConfig, stage: str) -> bool:
    if stage == "synthetic":
        return cfg.synthetic.enabled
    if stage in ("isaid", "loveda", "historic"):
        return getattr(cfg, stage).enabled
    return True


def run_pipeline(
    cfg: PipelineConfig, until: str | None = None, overwrite: bool = False
) -> dict[str, dict]:
    """Run the enabled stages in order (up to and including ``until``); returns their reports."""
    if until is not None and until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    reports = {}
    for name, stage in STAGES.items():
        if stage_enabled(cfg, name):
            reports[name] = stage(cfg, overwrite)
        if name == until:
            break
    return reports
