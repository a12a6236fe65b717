"""``aerialseg demo`` at a small size: datagen -> train -> tools/test.py tables -> overlays, and the
shuffled-expression control set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aerialformats.rle import encode_mask
from aerialseg.demo import (
    CONTROL_SET,
    TEST_SET,
    ShuffledExpressionDataset,
    apply_cpu_plan,
    cached_pipeline,
    cpu_plan,
    run_demo,
)

REPO = Path(__file__).resolve().parents[2]


def write_samples(path: Path, texts: list[str]) -> None:
    samples = [
        dict(
            img_path=f"{i}.png",
            text=text,
            img_id=str(i),
            target_id="object:0",
            expr_id="0",
            expr_type="original",
            target_type="instance",
            dataset_name="aerial_d",
            category="building",
            mask_rle=dict(size=[4, 4], counts="04"),
        )
        for i, text in enumerate(texts)
    ]
    path.write_text(json.dumps(samples))


def test_shuffled_expression_dataset_gives_every_sample_another_samples_text(tmp_path):
    texts = [f"the building number {i}" for i in range(9)]
    write_samples(tmp_path / "samples.json", texts)
    inner = dict(type="BaseReferringDataset", ann_file=str(tmp_path / "samples.json"), pipeline=[])
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")
    control = ShuffledExpressionDataset(inner, seed=3)
    assert len(control) == 9
    shuffled = [control.get_data_info(i)["text"] for i in range(9)]
    assert sorted(shuffled) == sorted(texts)  # a permutation of the same expressions
    assert all(shuffled[i] != texts[i] for i in range(9))  # nobody keeps their own
    assert [control.get_data_info(i)["img_id"] for i in range(9)] == [str(i) for i in range(9)]
    assert shuffled == [ShuffledExpressionDataset(inner, seed=3)[i]["text"] for i in range(9)]
    assert shuffled != [ShuffledExpressionDataset(inner, seed=4)[i]["text"] for i in range(9)]

    repeated = ["all water", "all roads", "all forest"] * 3  # templates repeat across images
    write_samples(tmp_path / "samples.json", repeated)
    for seed in range(5):
        control = ShuffledExpressionDataset(inner, seed=seed)
        assert all(control.get_data_info(i)["text"] != repeated[i] for i in range(9))


# The head of the tiny configs' train pipeline (configs/_base_/datasets/tiny_aerial_d.py).
TINY_HEAD = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadReferringMask"),
    dict(type="ReferringResize", scale=(32, 32), keep_ratio=True),
]


def write_scenes(folder: Path, count: int) -> list[dict]:
    """``count`` random 48 x 40 PNGs, each with a random target mask; their sample dicts."""
    rng = np.random.default_rng(0)
    samples = []
    for index in range(count):
        path = folder / f"scene{index}.png"
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
        mask = rng.random((48, 40)) < 0.3
        samples.append(
            dict(
                img_path=str(path),
                sample_idx=index,
                text=f"expression {index}",
                mask_rle=encode_mask(mask),
            )
        )
    return samples


def test_cached_transforms_replay_the_uncached_pipeline_without_rereading(tmp_path):
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS

    init_default_scope("mmseg")
    samples = write_scenes(tmp_path, 3)
    referee = Compose(TINY_HEAD)
    expected = [referee(dict(sample)) for sample in samples]
    cached = TRANSFORMS.build(dict(type="CachedTransforms", transforms=TINY_HEAD))
    for sample in samples:
        got = cached(dict(sample))
        assert got["img"].shape == (32, 27, 3)  # resized, like the referee
        got["img"][:] = 0  # a consumer writing into its sample must not reach the cache
        got["gt_seg_map"][:] = 7
    for path in tmp_path.glob("*.png"):
        path.unlink()  # later visits must not read the files again
    for sample, want in reversed(list(zip(samples, expected))):
        swapped = dict(sample, text="another sample's expression")  # a control set's swap
        got = cached(swapped)
        assert got["text"] == "another sample's expression"
        assert sorted(got) == sorted(want)
        for name in want:
            if name == "text":
                continue
            if isinstance(want[name], np.ndarray):
                np.testing.assert_array_equal(got[name], want[name], err_msg=name)
            else:
                assert got[name] == want[name], name
        assert got["seg_fields"] == ["gt_seg_map"]


def test_cached_transforms_forget_the_least_recent_sample_and_refuse_random_ones(tmp_path):
    from mmcv.transforms import Compose
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS

    init_default_scope("mmseg")
    samples = write_scenes(tmp_path, 2)
    cached = TRANSFORMS.build(dict(type="CachedTransforms", transforms=TINY_HEAD, max_items=1))
    cached(dict(samples[0]))
    cached(dict(samples[1]))  # pushes sample 0 out
    Path(samples[0]["img_path"]).unlink()
    cached(dict(samples[1]))  # still cached
    with pytest.raises(FileNotFoundError):
        cached(dict(samples[0]))
    with pytest.raises(KeyError, match="sample_idx"):
        cached({key: value for key, value in samples[1].items() if key != "sample_idx"})
    # Wrapped after the loaders, its input already holds arrays (compared without ==).
    loaded = Compose(TINY_HEAD[:2])(dict(samples[1]))
    resize_only = TRANSFORMS.build(dict(type="CachedTransforms", transforms=TINY_HEAD[2:]))
    want = Compose(TINY_HEAD[2:])(dict(loaded))
    for _ in range(2):
        got = resize_only(dict(loaded))
        np.testing.assert_array_equal(got["img"], want["img"])
        np.testing.assert_array_equal(got["gt_seg_map"], want["gt_seg_map"])
        assert got["img_shape"] == want["img_shape"] == (32, 27)
    with pytest.raises(ValueError, match="RandomFlip"):
        TRANSFORMS.build(
            dict(type="CachedTransforms", transforms=[dict(type="RandomFlip", prob=0.5)])
        )


def test_cached_pipeline_keeps_packing_outside_the_cache():
    pack = dict(type="PackReferringInputs")
    assert cached_pipeline([*TINY_HEAD, pack]) == [
        dict(type="CachedTransforms", transforms=TINY_HEAD),
        pack,
    ]
    with pytest.raises(ValueError, match="PackReferringInputs"):
        cached_pipeline(TINY_HEAD)


AUTO = dict(torch=1, datagen_workers="auto", dataloader_workers=0)


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.1, 2),  # idle: both cores
        (2, 1.2, 1),  # one busy process
        (2, 2.0, 1),  # two busy processes (the machine): never fewer than 1
        (2, 6.5, 1),
        (16, 3.0, 4),  # many idle cores: capped by datagen.workers
    ],
)
def test_cpu_plan_leaves_busy_cores_alone(cores, load, expected):
    plan = cpu_plan(AUTO, max_datagen_workers=4 if cores == 16 else 2, cores=cores, load=load)
    assert plan["datagen_workers"] == expected
    assert plan["torch"] == 1 and plan["dataloader_workers"] == 0


def test_cpu_plan_takes_explicit_counts_and_refuses_bad_ones():
    plan = cpu_plan(dict(torch=2, datagen_workers=3, dataloader_workers=1), 8, cores=2, load=5.0)
    assert (plan["torch"], plan["datagen_workers"], plan["dataloader_workers"]) == (2, 3, 1)
    with pytest.raises(ValueError, match="datagen_workers"):
        cpu_plan(dict(datagen_workers=0), 2, cores=2, load=0.0)
    with pytest.raises(ValueError, match="threads.torch"):
        cpu_plan(dict(torch=0), 2, cores=2, load=0.0)


def test_apply_cpu_plan_pins_torch_opencv_and_child_processes(monkeypatch):
    import cv2
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "7")
    before_torch, before_cv2 = torch.get_num_threads(), cv2.getNumThreads()
    try:
        apply_cpu_plan(cpu_plan(AUTO, 2, cores=2, load=3.0))
        assert torch.get_num_threads() == 1
        assert cv2.getNumThreads() == 1
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            assert os.environ[name] == "1"
    finally:
        torch.set_num_threads(before_torch)
        cv2.setNumThreads(before_cv2)


@pytest.mark.slow
def test_demo_runs_end_to_end_at_a_small_size(tmp_path, capsys):
    work = tmp_path / "demo"
    options = {
        "datagen.workers": 1,
        "datagen.overrides": [
            "isaid.enabled=false",
            "synthetic.isaid_images={train: 0, val: 0}",
            "synthetic.loveda_tiles={train: 2, val: 1}",
            "historic.enabled=false",
            "export.formats=[xml]",
            "progress=false",
        ],
        "data.target_types": ["instance", "group", "semantic"],
        "train.max_iters": 12,
        "train.batch_size": 4,
        "train.warmup_iters": 2,
        "train.log_interval": 4,
        "overlays.count": 2,
    }
    config = str(REPO / "configs" / "demo.py")
    summary = run_demo(config, work_dir=str(work), cfg_options=options)
    printed = capsys.readouterr().out
    assert "test mIoU" in printed and "control" in printed and str(work / "overlays") in printed

    assert json.loads((work / "summary.json").read_text()) == summary
    assert summary["cpu_plan"]["torch"] == 1 and summary["cpu_plan"]["datagen_workers"] == 1
    assert 0.0 <= summary["test_mIoU"] <= 100.0 and 0.0 <= summary["control_mIoU"] <= 100.0
    assert summary["test_samples"] > 0
    assert summary["train_loss_last"] < summary["train_loss_first"]
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.name == "iter_12.pth"
    table = (work / "test" / "benchmark.md").read_text()
    assert TEST_SET in table and CONTROL_SET in table
    assert len(summary["overlays"]) == 2
    for path in summary["overlays"]:
        overlay = np.asarray(Image.open(path))
        assert overlay.ndim == 3 and overlay.shape[1] > overlay.shape[0]  # two panels side by side

    # A second run resumes: datagen and the finished training are reused, not repeated.
    trained_at = checkpoint.stat().st_mtime_ns
    again = run_demo(config, work_dir=str(work), cfg_options=options)
    assert checkpoint.stat().st_mtime_ns == trained_at
    assert again["test_mIoU"] == summary["test_mIoU"]
