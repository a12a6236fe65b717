"""``import aerialseg`` registers into mmseg's registries, and every config loads and resolves."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, METRICS, MODELS, TRANSFORMS

REPO = Path(__file__).resolve().parents[2]
# Runner configs; configs/demo.py holds the settings of `aerialseg demo`, not a runner config.
CONFIGS = sorted(
    p
    for p in (REPO / "configs").glob("**/*.py")
    if "_base_" not in p.parts and p != REPO / "configs" / "demo.py"
)


def registered_by_aerialseg(registry) -> set[str]:
    import aerialseg  # noqa: F401

    return {
        name
        for name, cls in registry.module_dict.items()
        if cls.__module__.startswith("aerialseg.")
    }


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        (DATASETS, {"AerialDDataset", "RRSISDDataset", "RefSegRSDataset", "NWPUReferDataset"}),
        (TRANSFORMS, {"LoadReferringMask", "PackReferringInputs"}),
        (METRICS, {"ReferringMetric"}),
        (MODELS, {"ClipSAM"}),
    ],
    ids=["datasets", "transforms", "metrics", "models"],
)
def test_import_registers_into_mmseg_registries(registry, expected):
    names = registered_by_aerialseg(registry)
    assert expected <= names, f"missing from mmseg {registry.name}: {sorted(expected - names)}"


def test_config_with_custom_imports_builds_a_registered_module(tmp_path):
    config = tmp_path / "metric_only.py"
    base = REPO / "configs" / "_base_" / "default_runtime.py"
    config.write_text(
        f"_base_ = [{str(base)!r}]\n"
        "val_evaluator = dict(type='ReferringMetric', iou_thrs=[0.5, 0.7])\n"
    )
    cfg = Config.fromfile(str(config))
    assert cfg.custom_imports == dict(imports=["aerialseg"], allow_failed_imports=False)
    assert cfg.default_scope == "mmseg"
    init_default_scope(cfg.default_scope)
    metric = METRICS.build(cfg.val_evaluator)
    assert type(metric).__module__.startswith("aerialseg.")
    assert type(metric).__name__ == "ReferringMetric"


@pytest.mark.parametrize("config_path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_config_loads_and_names_registered_types(config_path):
    cfg = Config.fromfile(str(config_path))
    assert cfg.get("default_scope") == "mmseg"
    assert "aerialseg" in cfg.custom_imports["imports"]
    init_default_scope("mmseg")

    def check(node, where):
        if isinstance(node, dict):
            type_name = node.get("type")
            if isinstance(type_name, str) and where:
                registry = {"model": MODELS, "dataset": DATASETS, "pipeline": TRANSFORMS}[where]
                if where != "model" or "." not in type_name:
                    assert registry.get(type_name) is not None, f"{type_name} not in {where}"
            for key, value in node.items():
                check(value, _scope_of(key, where))
        elif isinstance(node, list | tuple):
            for item in node:
                check(item, where)

    check(cfg.get("model", {}), "model" if "model" in cfg else None)
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(split):
            check(cfg[split]["dataset"], "dataset")


def _scope_of(key: str, where: str | None) -> str | None:
    if key == "pipeline":
        return "pipeline"
    if key in ("dataset", "datasets"):
        return "dataset"
    return where
