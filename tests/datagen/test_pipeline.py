"""The whole chain: determinism across worker counts, kill-and-resume, exports read back by the
aerialseg loaders, historic variants, parallel bookkeeping and the CLI."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from datagen.cli import main
from datagen.config import config_to_dict
from datagen.parallel import map_units
from datagen.pipeline import run_pipeline
from datagen.rules import run_rules
from datagen.stage_state import StageError
from datagen.storage import read_json, read_rgb
from tests.datagen.conftest import polygon_annotation, tiny_config, write_isaid_split

REPO = Path(__file__).resolve().parents[2]
COMPARED = ("sources", "stages", "export", "reports")


def tree(root: Path, folders=COMPARED) -> dict[str, str]:
    """Relative path -> content hash of every file under the compared folders."""
    files = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run of the tiny config, through export."""
    cfg = tiny_config(tmp_path_factory.mktemp("reference") / "work")
    run_pipeline(cfg)
    return cfg


@pytest.mark.slow
def test_two_workers_give_identical_files(reference, tmp_path):
    cfg = tiny_config(tmp_path / "work", workers=2)
    run_pipeline(cfg)
    expected = tree(reference.work_path)
    assert len(expected) > 100
    assert tree(cfg.work_path) == expected


def _journal_lines(work: Path, stage: str) -> int:
    journal = work / ".state" / stage / "journal.jsonl"
    return len(journal.read_text().splitlines()) if journal.is_file() else 0


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(reference, tmp_path):
    work = tmp_path / "work"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**config_to_dict(tiny_config(work)), "workers": 1}))
    command = [
        sys.executable,
        "-m",
        "datagen",
        "run",
        "--config",
        str(config),
        "--until",
        "expressions",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    killed_in = None
    deadline = time.monotonic() + 60
    while killed_in is None and process.poll() is None and time.monotonic() < deadline:
        for stage in ("rules", "expressions"):
            done = (work / ".state" / stage / "complete.json").is_file()
            if not done and _journal_lines(work, stage) >= 2:
                os.killpg(process.pid, signal.SIGKILL)
                killed_in = stage
                break
        time.sleep(0.005)
    process.wait(timeout=30)
    assert killed_in is not None, "the run finished before it could be killed"
    total = read_json(reference.work_path / "reports" / f"{killed_in}.json")["units"]
    assert _journal_lines(work, killed_in) < total
    assert not (work / ".state" / killed_in / "complete.json").exists()

    resumed = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    folders = ("sources", "stages")
    expected = {
        k: v for k, v in tree(reference.work_path, folders).items() if "/historic/" not in k
    }
    assert tree(work, folders) == expected
    assert not list(work.rglob("*.tmp"))
    for stage in ("isaid", "loveda", "rules", "expressions"):
        assert read_json(work / "reports" / f"{stage}.json") == read_json(
            reference.work_path / "reports" / f"{stage}.json"
        )


@pytest.mark.slow
def test_export_reads_back_as_the_same_triplets(reference, tmp_path):
    from aerialformats.aerial_d import read_patch_xml
    from aerialseg.datasets.aerial_d import AerialDDataset
    from aerialseg.datasets.refer_io import load_coco_json, load_refs_pickle

    work = reference.work_path
    expected = set()
    exported_names = {"train": set(), "val": set()}
    for path in sorted((work / "stages" / "expressions").rglob("*.json")):
        record = read_json(path)
        if record["targets"]:
            exported_names[record["split"]].add(record["name"])
        for target in record["targets"]:
            kind = "object" if target["kind"] == "instance" else "group"
            for e in target["expressions"]:
                expected.add(
                    (
                        record["split"],
                        record["name"],
                        f"{kind}:{target['id']}",
                        e["id"],
                        e["text"],
                        target["rle"]["counts"],
                    )
                )
    assert len(expected) > 200

    def triplets(dataset, split):
        infos = (dataset.get_data_info(i) for i in range(len(dataset)))
        return {
            (split, d["img_id"], d["target_id"], d["expr_id"], d["text"], d["mask_rle"]["counts"])
            for d in infos
        }

    from_xml, from_parquet = set(), set()
    for split in ("train", "val"):
        xml = AerialDDataset(
            data_root=str(work / "export" / "aeriald"), split=split, ann_format="xml"
        )
        parquet = AerialDDataset(
            data_root=str(work / "export" / "hf"), split=split, ann_format="parquet",
            image_dir=str(tmp_path / "images"),
        )  # fmt: skip
        from_xml |= triplets(xml, split)
        from_parquet |= triplets(parquet, split)
        # Regression (bug 1): every patch with expressions is exported with its own image, and
        # only those; nothing upstream is deleted.
        images = work / "export" / "aeriald" / split / "images"
        assert {p.stem for p in images.glob("*.png")} == exported_names[split]
        for image in images.glob("*.png"):
            source = "isaid" if image.name.startswith("P") else "loveda"
            original = work / "stages" / source / split / "images" / image.name
            # The chain stores patches uncompressed; the release is the same pixels, compressed.
            assert np.array_equal(read_rgb(image), read_rgb(original))
            assert image.stat().st_size < original.stat().st_size
        extracted = tmp_path / "images" / split
        for image in extracted.glob("*.png"):
            assert image.read_bytes() == (images / image.name).read_bytes()
    assert from_xml == expected and from_parquet == expected

    # Regression (bug 9): one naming scheme for objects and groups.
    names = set()
    for path in (work / "export" / "aeriald" / "train" / "annotations").glob("*.xml"):
        annotation = read_patch_xml(path)
        names |= {o.category for o in annotation.objects} | {g.category for g in annotation.groups}
    assert "small vehicle" in names and not any("_" in n for n in names)

    import datasets

    files = {"validation": str(work / "export" / "hf" / "data" / "validation-*.parquet")}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    loaded = loaded["validation"]
    assert loaded.num_rows == sum(1 for t in expected if t[0] == "val")
    row = loaded[0]
    assert row["image"].size == (480, 480) and row["expression_type"] == "original"

    instances = load_coco_json(str(work / "export" / "refcoco" / "instances.json"), "instances")
    refs = load_refs_pickle(str(work / "export" / "refcoco" / "refs(unc).p"))
    ann_ids = [a["id"] for a in instances["annotations"]]
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    # Regression: ids restarted for every file in the original converter.
    assert len(set(ann_ids)) == len(ann_ids) and len({r["ref_id"] for r in refs}) == len(refs)
    assert len(set(sent_ids)) == len(sent_ids) == len(expected)
    assert {r["ann_id"] for r in refs} <= set(ann_ids)
    assert all(a["category_id"] > 0 for a in instances["annotations"])

    markdown = (work / "export" / "statistics.md").read_text()
    assert "| Expressions | " in markdown and f"{len(expected):,}" in markdown


@pytest.mark.slow
def test_historic_variants_come_from_the_shared_filter(reference):
    from aerialformats.historic import apply_historic_filter
    from datagen.storage import stable_seed

    variants = sorted((reference.work_path / "stages" / "historic").rglob("*.png"))
    assert variants
    modes = set()
    for path in variants:
        name, mode = (
            path.stem.rsplit("_", 1)
            if not path.stem.endswith("bw_grain")
            else (path.stem[:-9], "bw_grain")
        )
        modes.add(mode)
        split = path.parent.parent.name
        source = "isaid" if name.startswith("P") else "loveda"
        original = read_rgb(
            reference.work_path / "stages" / source / split / "images" / f"{name}.png"
        )
        rng = np.random.default_rng(stable_seed(reference.seed, "historic-noise", name))
        expected = apply_historic_filter(original, mode, rng)
        assert np.array_equal(read_rgb(path), expected)
        if mode == "sepia":
            # Regression (bug 12): the matrix acts on RGB; on BGR arrays it would differ.
            rng = np.random.default_rng(stable_seed(reference.seed, "historic-noise", name))
            swapped = apply_historic_filter(np.ascontiguousarray(original[:, :, ::-1]), mode, rng)[
                :, :, ::-1
            ]
            assert not np.array_equal(expected, swapped)
    assert modes <= {"bw", "bw_grain", "sepia"}


@pytest.mark.slow
def test_stage_patches_hold_the_source_windows_in_rgb(reference):
    # The isaid stage works in OpenCV's BGR order; a swapped channel would show here.
    work = reference.work_path
    checked = 0
    for split in ("train", "val"):
        folder = work / "stages" / "isaid" / split
        for path in sorted((folder / "annotations").glob("*.json"))[:4]:
            patch = read_json(path)
            x, y, w, h = patch["window"]
            source = read_rgb(
                reference.isaid_root() / split / "images" / "images" / patch["source_image"]
            )
            stored = read_rgb(folder / "images" / f"{patch['name']}.png")
            assert np.array_equal(stored, source[y : y + h, x : x + w])
            checked += 1
    assert checked >= 4


def _slow_double(payload):
    time.sleep(payload["sleep"])
    return {"value": payload["value"] * 2}


def test_parallel_results_keep_their_keys_whatever_the_completion_order():
    units = [(f"unit{k}", {"value": k, "sleep": 0.05 if k % 3 == 0 else 0.0}) for k in range(12)]
    results = dict(map_units(_slow_double, units, workers=2, chunksize=1, progress=False))
    assert results == {f"unit{k}": {"value": 2 * k} for k in range(12)}


def test_changed_configuration_is_refused_unless_overwritten(make_config):
    cfg = make_config(synthetic={"isaid_images": {}}, isaid={"enabled": False})
    run_pipeline(cfg, until="rules")
    changed = make_config(
        synthetic={"isaid_images": {}}, isaid={"enabled": False}, rules={"cluster_eps": 10.0}
    )
    with pytest.raises(StageError, match="different configuration"):
        run_rules(changed)
    assert (
        run_rules(changed, overwrite=True)["units"]
        == read_json(cfg.work_path / "reports" / "rules.json")["units"]
    )


def test_cli_names_bad_config_keys(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("rules:\n  cluster_epsilon: 3\n")
    assert main(["rules", "--config", str(config)]) == 2
    assert "rules.cluster_epsilon" in capsys.readouterr().err
    config.write_text("workers: two\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "'workers' must be an integer" in capsys.readouterr().err


@pytest.mark.slow
def test_patches_without_expressions_never_cost_other_patches_their_files(make_config):
    # Regression (bug 1): results were matched to files by position, so a patch with no
    # surviving expression could get a valid patch deleted. Three one-window images; the middle
    # one holds only a cut-off sliver of a car.
    cfg = make_config(
        workers=2, synthetic={"enabled": False}, loveda={"enabled": False},
        isaid={"splits": ["train"]}, historic={"enabled": False},
    )  # fmt: skip
    car = polygon_annotation("Small_Vehicle", [200, 200, 224, 200, 224, 212, 200, 212])
    sliver = polygon_annotation("Small_Vehicle", [-20, 100, 4, 100, 4, 112, -20, 112])
    images = [
        (f"P000{k}.png", np.full((480, 480, 3), 60 + 40 * k, dtype=np.uint8), [ann])
        for k, ann in enumerate([car, sliver, car])
    ]
    write_isaid_split(cfg.isaid_root(), "train", images)
    reports = run_pipeline(cfg)
    assert reports["expressions"]["counts"]["patches_with_expressions"] == 2
    work = cfg.work_path
    exported = work / "export" / "aeriald" / "train" / "images"
    assert sorted(p.name for p in exported.iterdir()) == [
        "P0000_x00000_y00000.png", "P0002_x00000_y00000.png",
    ]  # fmt: skip
    for name in ("P0000_x00000_y00000.png", "P0002_x00000_y00000.png"):
        source = work / "stages" / "isaid" / "train" / "images" / name
        assert np.array_equal(read_rgb(exported / name), read_rgb(source))
    assert (work / "stages" / "isaid" / "train" / "images" / "P0001_x00000_y00000.png").is_file()
