"""Model selection on val, reporting on test: the shipped configs pass, test-as-val is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from aerialseg.datasets.split_check import ValTestOverlapError, check_val_test_separate

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    [
        *(REPO / "configs" / "_base_" / "datasets").glob("*.py"),
        *(REPO / "configs").glob("clipsam*/*.py"),
    ]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates_on_val(path):
    cfg = Config.fromfile(str(path))
    allowed = check_val_test_separate(cfg)
    # Only Aerial-D (no test split) may report the split it validates on.
    assert set(allowed) <= {"aerial_d"}


def dataset(split, root="data/rrsisd", **extra):
    return dict(type="RRSISDDataset", data_root=root, split=split, **extra)


def test_test_as_val_is_refused_with_a_clear_message():
    cfg = Config(
        dict(
            val_dataloader=dict(dataset=dataset("test")),
            test_dataloader=dict(dataset=dataset("test")),
        )
    )
    with pytest.raises(
        ValTestOverlapError,
        match=r"rrsisd split 'test' under 'data/rrsisd'.*allow_val_test_overlap",
    ):
        check_val_test_separate(cfg)
    cfg.allow_val_test_overlap = dict(rrsisd="reason given")
    assert check_val_test_separate(cfg) == {"rrsisd": "reason given"}


def test_overlap_inside_wrappers_and_named_test_sets_is_found(tmp_path):
    # The same folder spelled two ways (a symlink) is still the same files.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cfg = Config(
        dict(
            val_dataloader=dict(
                dataset=dict(
                    type="ConcatDataset",
                    datasets=[dataset("val"), dataset("test", root=str(tmp_path / "real"))],
                )
            ),
            test_sets=[
                dict(name="a", dataloader=dict(dataset=dataset("test"))),
                dict(
                    name="b", dataloader=dict(dataset=dataset("test", root=str(tmp_path / "link")))
                ),
            ],
        )
    )
    with pytest.raises(ValTestOverlapError, match=r"test set 'b'"):
        check_val_test_separate(cfg)


def test_different_splits_or_files_are_separate():
    cfg = Config(
        dict(
            val_dataloader=dict(dataset=dataset("val")),
            test_dataloader=dict(dataset=dataset("test")),
        )
    )
    assert check_val_test_separate(cfg) == {}
    cfg.val_dataloader.dataset = dataset("test", refs_file="refs(umd).p")
    assert check_val_test_separate(cfg) == {}


def test_training_on_a_test_as_val_config_is_refused(tmp_path, capsys):
    from aerialseg.engine import train_main

    config = tmp_path / "test_as_val.py"
    bases = [
        str(REPO / "configs" / "_base_" / name)
        for name in ("default_runtime.py", "datasets/rrsisd.py")
    ]
    config.write_text(f"_base_ = {bases!r}\nval_dataloader = dict(dataset=dict(split='test'))\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(config), "--work-dir", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    assert "the validation set and the test set read the same files" in capsys.readouterr().err
