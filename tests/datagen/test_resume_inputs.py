"""Resume notices changed inputs: editing a polygon or replacing an image after a run redoes
exactly the affected units, and the result equals a fresh run on the edited sources."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import pytest

from datagen import expressions, isaid_patches, loveda_patches, rules
from datagen.pipeline import run_pipeline
from datagen.synthetic import isaid_json_path
from tests.datagen.conftest import tiny_config

STAGES = ("isaid", "loveda", "rules", "expressions")


def journal_keys(work: Path, stage: str) -> list[str]:
    lines = (work / ".state" / stage / "journal.jsonl").read_text().splitlines()
    return [json.loads(line)["key"] for line in lines]


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def changed_patches(before: dict, after: dict, stage: str, suffix: str) -> set[str]:
    """``split/name`` of the files of ``stage`` that are new or differ."""
    return {
        f"{Path(rel).parts[1]}/{Path(rel).stem}"
        for rel, digest in after.items()
        if rel.startswith(f"{stage}/") and rel.endswith(suffix) and before.get(rel) != digest
    }


def rerun(cfg) -> dict[str, list[str]]:
    """Run again; return the unit keys each stage redid."""
    work = cfg.work_path
    counts = {stage: len(journal_keys(work, stage)) for stage in STAGES}
    run_pipeline(cfg, until="expressions")
    return {stage: journal_keys(work, stage)[counts[stage] :] for stage in STAGES}


@pytest.fixture
def ran(tmp_path):
    """A finished run on sources the user owns (drawn once, then used like a real dataset)."""
    drawn = tiny_config(tmp_path / "drawn")
    run_pipeline(drawn, until="synthetic")
    cfg = tiny_config(
        tmp_path / "work", synthetic={"enabled": False}, historic={"enabled": False},
        isaid={"root": str(drawn.isaid_root())}, loveda={"root": str(drawn.loveda_root())},
    )  # fmt: skip
    run_pipeline(cfg, until="expressions")
    return cfg


UNIT_FUNCTIONS = {
    "isaid": (isaid_patches, "_image_unit"),
    "loveda": (loveda_patches, "_tile_unit"),
    "rules": (rules, "_patch_unit"),
    "expressions": (expressions, "_patch_unit"),
}


def count_unit_calls(monkeypatch) -> Counter:
    """Count the work-unit calls of each stage (the tiny config runs them in this process)."""
    calls: Counter = Counter()
    for stage, (module, name) in UNIT_FUNCTIONS.items():
        original = getattr(module, name)

        def counted(payload, original=original, stage=stage):
            calls[stage] += 1
            return original(payload)

        monkeypatch.setattr(module, name, counted)
    return calls


def test_untouched_and_touched_inputs_redo_nothing(ran, monkeypatch):
    calls = count_unit_calls(monkeypatch)
    assert rerun(ran) == {stage: [] for stage in STAGES}
    # A touched (or copied) file keeps its content: the digest says nothing changed. The new
    # stat is journaled, so the next run trusts it without hashing.
    image = sorted((ran.isaid_root() / "train" / "images" / "images").glob("*.png"))[0]
    later = image.stat().st_mtime_ns + 5_000_000_000
    os.utime(image, ns=(later, later))
    refreshed = {stage: [] for stage in STAGES}
    refreshed["isaid"] = [f"train/{image.name}"]
    assert rerun(ran) == refreshed
    assert rerun(ran) == {stage: [] for stage in STAGES}
    assert sum(calls.values()) == 0


def test_edited_polygon_and_replaced_image_redo_exactly_the_affected_units(
    ran, tmp_path, monkeypatch
):
    work = ran.work_path
    before = digests(work / "stages")

    # Move one vertex of one annotation of the second train image by 7 px.
    split_file = isaid_json_path(ran.isaid_root(), "train")
    data = json.loads(split_file.read_text())
    image = sorted(data["images"], key=lambda im: im["file_name"])[1]
    annotation = next(a for a in data["annotations"] if a["image_id"] == image["id"])
    annotation["segmentation"][0][0] += 7.0
    split_file.write_text(json.dumps(data))
    # Replace one LoveDA tile by its colour negative.
    tile = sorted((ran.loveda_root() / "Train").rglob("images_png/*.png"))[0]
    cv2.imwrite(str(tile), 255 - cv2.imread(str(tile)))

    calls = count_unit_calls(monkeypatch)
    redone = rerun(ran)
    after = digests(work / "stages")
    assert calls == {stage: len(keys) for stage, keys in redone.items() if keys}
    assert redone["isaid"] == [f"train/{image['file_name']}"]
    assert redone["loveda"] == [f"train/{tile.parent.parent.name}/{tile.stem}"]
    # Later stages redo exactly the patches whose files changed, and at least one each.
    patches_changed = changed_patches(before, after, "isaid", ".json") | changed_patches(
        before, after, "loveda", ".png"
    )
    assert any(key.startswith("train/P") for key in patches_changed)
    assert any(key.startswith("train/L") for key in patches_changed)
    assert set(redone["rules"]) == patches_changed
    assert set(redone["expressions"]) == changed_patches(before, after, "rules", ".json")
    assert len(redone["rules"]) < len(journal_keys(work, "rules")) - len(redone["rules"])

    fresh = tiny_config(
        tmp_path / "fresh", synthetic={"enabled": False}, historic={"enabled": False},
        isaid={"root": str(ran.isaid_root())}, loveda={"root": str(ran.loveda_root())},
    )  # fmt: skip
    run_pipeline(fresh, until="expressions")
    assert digests(fresh.work_path / "stages") == after
