"""Atomic writes and the PNG encoder of the light bottom layer."""

from __future__ import annotations

import io
import os
import stat

import cv2
import numpy as np
import pytest
from PIL import Image

from aerialformats.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    png_params,
    remove_temp_files,
)


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    with open(tmp_path / "plain.bin", "wb") as stream:
        stream.write(b"x")
    atomic_write_bytes(tmp_path / "deep" / "er" / "atomic.bin", b"x")  # folders made on demand
    mode = stat.S_IMODE(os.stat(tmp_path / "deep" / "er" / "atomic.bin").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.bin").st_mode)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as stream:
        stream.write(b"partial")
        raise RuntimeError("killed")
    assert target.read_text() == '{"a":1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_keep_identical_leaves_the_file_and_its_mtime_alone(tmp_path):
    target = tmp_path / "patch.json"
    atomic_write_bytes(target, b"same")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    atomic_write_bytes(target, b"same", keep_identical=True)
    assert target.stat().st_mtime_ns == 1_000_000_000
    atomic_write_bytes(target, b"diff", keep_identical=True)  # same size, other bytes
    assert target.read_bytes() == b"diff" and target.stat().st_mtime_ns != 1_000_000_000
    atomic_write_bytes(target, b"diff")  # without the flag it always rewrites
    assert target.stat().st_mtime_ns != 1_000_000_000


def test_remove_temp_files_sweeps_what_a_kill_leaves(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".x.png.123-4.tmp").write_bytes(b"")
    (tmp_path / "a" / "x.png").write_bytes(b"")
    assert remove_temp_files(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_is_lossless_rgb_at_every_level(level):
    rng = np.random.default_rng(level)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[:, :20] = (250, 10, 10)  # a red block: RGB order must survive
    data = encode_png(image, level)
    # Pillow as an independent decoder (it reads RGB).
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image)
    grey = image[:, :, 0]
    assert np.array_equal(
        cv2.imdecode(np.frombuffer(encode_png(grey, level), np.uint8), cv2.IMREAD_UNCHANGED), grey
    )


def test_level_zero_stores_and_level_one_compresses():
    image = np.zeros((64, 64, 3), np.uint8)
    assert len(encode_png(image, 0)) > image.size  # raw bytes plus filter bytes and headers
    assert len(encode_png(image, 1)) < image.size // 10
    with pytest.raises(ValueError, match="0..9"):
        png_params(10)
