"""One-way layers: every ``datagen`` stage and ``llm enhance`` run without torch, mmseg, aerialseg.

Each check runs in a fresh interpreter (this test process has long imported torch) and lists the
heavy top-level packages found in ``sys.modules`` afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.datagen.conftest import TINY

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "mmseg", "mmcv", "mmengine", "mmdet", "aerialseg", "transformers")

_REPORT_HEAVY = f"""
import json, sys
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({list(HEAVY)!r}))
print("HEAVY=" + json.dumps(heavy))
"""


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _heavy_modules(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("HEAVY=")][-1]
    return json.loads(line[len("HEAVY=") :])


@pytest.mark.slow
def test_every_datagen_stage_and_llm_enhance_run_without_torch(tmp_path):
    """``python -m datagen run`` (every stage, export included), then ``llm enhance`` on the
    exported val split against the loopback OpenAI server, all in one fresh interpreter."""
    config = dict(TINY, work_dir=str(tmp_path / "work"))
    config["synthetic"] = dict(TINY["synthetic"], isaid_images={"train": 1, "val": 1})
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    val = tmp_path / "work" / "export" / "aeriald" / "val"
    code = f"""
import os, runpy, sys
sys.argv = ["datagen", "run", "--config", {str(config_path)!r}]
try:
    runpy.run_module("datagen", run_name="__main__")
except SystemExit as exit_:
    assert exit_.code in (0, None), exit_.code

from llm.config import EnhanceConfig
from llm.enhance import RunOptions, enhance
from llm.loopback_server import LoopbackServer
from llm.targets import discover_annotations

os.environ["LLM_TEST_KEY"] = "sk-test"
with LoopbackServer() as server:
    backend = {{"base_url": server.base_url, "model": "teacher", "api_key_env": "LLM_TEST_KEY"}}
    config = EnhanceConfig.model_validate({{"backend": backend, "render": {{"image_size": 64}}}})
    summary = enhance(
        config, discover_annotations({str(val)!r}), {str(tmp_path / "llm")!r},
        RunOptions(progress=False, sample=4),
    )
print("LLM_OK=" + str(summary.ok))
{_REPORT_HEAVY}
"""
    result = _run_python(code, tmp_path)
    assert _heavy_modules(result) == []
    export = tmp_path / "work" / "export"
    assert any((export / "aeriald" / "train" / "annotations").glob("*.xml"))
    assert (export / "hf" / "data" / "train-00000-of-00001.parquet").is_file()
    assert (export / "refcoco" / "instances.json").is_file()
    assert any((tmp_path / "work" / "stages" / "historic").rglob("*.png"))
    assert "LLM_OK=4" in result.stdout  # four sampled targets enhanced, written back
    assert 'type="enhanced"' in "".join(p.read_text() for p in val.rglob("*.xml"))


def test_datagen_help_importtime_shows_no_torch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "datagen", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "datagen.cli" in imported  # the -X importtime table is what we parse
    assert not {name.split(".")[0] for name in imported} & set(HEAVY)


def test_aerialseg_reexports_the_light_format():
    """``aerialseg`` stays the mmseg plugin entry and exposes the same objects, not copies."""
    import aerialformats.aerial_d as light
    import aerialformats.historic as light_historic
    from aerialseg.datasets import aerial_d_format, transforms

    assert aerial_d_format.read_patch_xml is light.read_patch_xml
    assert aerial_d_format.RLEMask is light.RLEMask
    assert transforms.apply_historic_filter is light_historic.apply_historic_filter
