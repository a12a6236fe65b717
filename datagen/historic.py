"""Stage ``historic``: baked historic-imagery variants of a seeded share of the patches.

The filter is :func:`aerialformats.historic.apply_historic_filter`, the one
implementation training and evaluation use (RGB order, the paper's parameters), so a baked
variant equals what the on-the-fly training transform would produce for the same generator.
Which patches get a variant, the mode and the noise all follow from (seed, patch name), so the
choice does not depend on the worker count or on the order of the files.

Variants are written to ``<work_dir>/stages/historic/{split}/images/<name>_<mode>.png``; the
export adds them as extra patches (same annotations) only with ``historic.include_in_export``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aerialformats.historic import apply_historic_filter
from datagen.config import HistoricConfig, PipelineConfig, fingerprint
from datagen.expressions import expressions_dir
from datagen.isaid_patches import patch_dir
from datagen.rules import patch_units, upstream_fingerprint
from datagen.stage_state import (
    INPUTS_KEY,
    StageState,
    complete_stage,
    require_complete,
    run_units,
    unit_inputs,
)
from datagen.storage import atomic_write_png, read_json, read_rgb, stable_seed

__all__ = ["historic_choice", "historic_dir", "make_variant", "run_historic"]

SEED_SPACE = float(2**64)


def historic_dir(work_dir: Path, split: str) -> Path:
    return Path(work_dir) / "stages" / "historic" / split / "images"


def historic_choice(name: str, cfg: HistoricConfig, seed: int) -> str | None:
    """The mode of patch ``name``'s variant, or None when the patch gets none."""
    if stable_seed(seed, "historic-select", name) / SEED_SPACE >= cfg.fraction:
        return None
    return cfg.modes[stable_seed(seed, "historic-mode", name) % len(cfg.modes)]


def make_variant(image: np.ndarray, name: str, mode: str, seed: int) -> np.ndarray:
    """Apply the shared historic filter to an (H, W, 3) uint8 RGB patch."""
    rng = np.random.default_rng(stable_seed(seed, "historic-noise", name))
    return apply_historic_filter(image, mode, rng)


def _patch_unit(payload: dict) -> dict:
    work = Path(payload["work_dir"])
    name, split = payload["name"], payload["split"]
    mode = historic_choice(name, payload["cfg"], payload["seed"])
    if mode is None or not read_json(expressions_dir(work, split) / f"{name}.json")["targets"]:
        return {"outputs": [], "counts": {"patches": 1}}
    image = read_rgb(patch_dir(work, payload["source"], split) / "images" / f"{name}.png")
    variant = make_variant(image, name, mode, payload["seed"])
    out = historic_dir(work, split) / f"{name}_{mode}.png"
    atomic_write_png(out, variant, payload["cfg"].png_compression, keep_identical=True)
    return {
        "outputs": [str(out.relative_to(work))],
        "variant": {"name": f"{name}_{mode}", "mode": mode},
        "counts": {"patches": 1, f"variants_{mode}": 1},
    }


def run_historic(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Write the variants of the selected patches; returns the stage report."""
    require_complete(cfg.work_path, "expressions")
    units = patch_units(cfg)
    for _, payload in units:
        payload.update(cfg=cfg.historic, seed=cfg.seed)
        work, split, name = cfg.work_path, payload["split"], payload["name"]
        payload[INPUTS_KEY] = unit_inputs(
            produced=[
                expressions_dir(work, split) / f"{name}.json",
                patch_dir(work, payload["source"], split) / "images" / f"{name}.png",
            ]
        )
    state = StageState(
        cfg.work_path,
        "historic",
        fingerprint(
            "historic", cfg.seed, cfg.historic, upstream_fingerprint(cfg.work_path, ["expressions"])
        ),
        [cfg.work_path / "stages" / "historic"],
    )
    # Only a few percent of the patches get a variant: workers pay off only for many patches.
    results = run_units(
        state,
        cfg,
        units,
        _patch_unit,
        desc="historic variants",
        unit="patch",
        overwrite=overwrite,
        min_units_per_worker=200,
    )
    return complete_stage(state, results)
