"""tools/browse_dataset.py: PNGs with the target tinted and the expression written below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aerialseg.datasets.browse import browse_main, render_sample
from tests.datasets.fixtures import box_mask, write_refsegrs

REPO = Path(__file__).resolve().parents[2]


def test_render_sample_tints_exactly_the_target():
    image = np.zeros((20, 30, 3), np.uint8)
    mask = box_mask(20, 30, 5, 5, 10, 15)
    out = np.asarray(render_sample(image, mask, "the vehicle in the middle"))
    assert out.shape[1] == 30 and out.shape[0] > 20  # a caption band below the image
    red = out[:20, :, 0] > 0
    assert np.array_equal(red, mask.astype(bool))
    assert out[7, 7].tolist() == [115, 29, 29]  # interior: 45 % of (255, 64, 64) over black
    assert out[5, 5].tolist() == [255, 64, 64]  # outline
    caption = out[20:]
    assert (caption < 128).any() and (caption == 255).any()  # dark text on white


def test_browse_main_renders_a_config_split(tmp_path):
    write_refsegrs(tmp_path / "refsegrs")
    out = tmp_path / "pngs"
    paths = browse_main(
        [
            str(REPO / "configs" / "_base_" / "datasets" / "refsegrs.py"),
            "--split",
            "train",
            "-n",
            "2",
            "--output-dir",
            str(out),
            "--historic",
            "--cfg-options",
            f"train_dataloader.dataset.data_root={tmp_path / 'refsegrs'}",
        ]
    )
    assert len(paths) == 2 and sorted(Path(p).name for p in out.iterdir()) == sorted(
        Path(p).name for p in paths
    )
    for path in paths:
        image = Image.open(path)
        assert image.size[0] == 32 and image.size[1] > 32
        assert Path(path).name.split("_")[1] == "refsegrs"
