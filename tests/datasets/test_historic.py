"""The historic filter: exact pixel values for the paper parameters, RGB-order sepia, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from aerialformats.historic import apply_historic_filter
from aerialseg.datasets.transforms.historic import HistoricFilter


def solid(rgb, size=4):
    image = np.zeros((size, size, 3), np.uint8)
    image[...] = rgb
    return image


def test_bw_uses_bt601_luma_and_returns_three_equal_channels():
    out = apply_historic_filter(solid((200, 100, 50)), "bw", np.random.default_rng(0))
    # 0.299*200 + 0.587*100 + 0.114*50 = 124.2
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (out == 124).all()


def test_sepia_matrix_is_applied_in_rgb_order():
    out = apply_historic_filter(
        solid((200, 100, 50)), "sepia", np.random.default_rng(0), sepia_noise_max=0
    )
    # R' = .393*200 + .769*100 + .189*50 = 164.95; G' = .349*200 + .686*100 + .168*50 = 146.8;
    # B' = .272*200 + .534*100 + .131*50 = 114.35. (BGR order would give R' = 134.)
    assert out[0, 0].tolist() == [165, 147, 114]


def test_sepia_noise_is_uniform_0_to_49_and_saturates():
    rng = np.random.default_rng(1)
    dark = apply_historic_filter(solid((0, 0, 0), 200), "sepia", rng)
    assert dark.min() == 0 and dark.max() == 49
    assert abs(float(dark.mean()) - 24.5) < 0.5
    bright = apply_historic_filter(solid((255, 255, 255), 50), "sepia", rng)
    # R' and G' exceed 255 before the noise; B' = 0.937 * 255 = 238.9 -> 239, plus 0..49, capped.
    assert (bright[:, :, :2] == 255).all()
    assert bright[:, :, 2].min() == 239 and bright[:, :, 2].max() == 255


def test_bw_grain_gamma_and_contrast_with_paper_defaults():
    rng = np.random.default_rng(0)
    # gamma 1.2 on a uniform 64 grey: 255 * (64/255)**1.2 = 48.53; contrast keeps a uniform image.
    out = apply_historic_filter(solid((64, 64, 64)), "bw_grain", rng, grain_sigma=0)
    assert (out == 49).all()
    # contrast 0.8 around the mean: values 0 and 200 (mean 100) become 20 and 180.
    image = solid((0, 0, 0))
    image[:2] = 200
    out = apply_historic_filter(image, "bw_grain", rng, gamma=1.0, grain_sigma=0)
    assert (out[:2] == 180).all() and (out[2:] == 20).all()


def test_bw_grain_noise_has_the_configured_sigma():
    out = apply_historic_filter(
        solid((128, 128, 128), 200),
        "bw_grain",
        np.random.default_rng(3),
        gamma=1.0,
        contrast=1.0,
    )
    assert abs(float(out[:, :, 0].std()) - 25.5) < 1.0
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


def test_same_generator_state_gives_the_same_output():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for mode in ("bw_grain", "sepia"):
        first = apply_historic_filter(image, mode, np.random.default_rng(5))
        again = apply_historic_filter(image, mode, np.random.default_rng(5))
        other = apply_historic_filter(image, mode, np.random.default_rng(6))
        assert np.array_equal(first, again)
        assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("image", "mode", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "bw", "uint8"),
        (np.zeros((4, 4), np.uint8), "bw", r"\(H, W, 3\)"),
        (np.zeros((4, 4, 4), np.uint8), "bw", r"\(H, W, 3\)"),
        (np.zeros((4, 4, 3), np.uint8), "vignette", "unknown historic mode"),
    ],
)
def test_bad_inputs_are_rejected(image, mode, message):
    with pytest.raises(ValueError, match=message):
        apply_historic_filter(image, mode, np.random.default_rng(0))


def sample(img_id, dataset="rrsisd", size=8):
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"img": image, "dataset_name": dataset, "img_id": str(img_id)}


def test_deterministic_transform_depends_only_on_the_sample_ids():
    transform = HistoricFilter(prob=1.0, deterministic=True, seed=0)
    first = transform(sample(7))
    again = transform(sample(7))
    assert first["historic"] and first["historic_mode"] == again["historic_mode"]
    assert np.array_equal(first["img"], again["img"])
    modes = [transform(sample(i))["historic_mode"] for i in range(300)]
    counts = {m: modes.count(m) for m in ("bw", "bw_grain", "sepia")}
    assert all(70 < c < 130 for c in counts.values()), counts
    reseeded = HistoricFilter(prob=1.0, deterministic=True, seed=1)
    assert [reseeded(sample(i))["historic_mode"] for i in range(300)] != modes


def test_deterministic_transform_with_partial_probability_is_reproducible():
    transform = HistoricFilter(prob=0.5, deterministic=True)
    chosen = [transform(sample(i))["historic"] for i in range(200)]
    assert chosen == [transform(sample(i))["historic"] for i in range(200)]
    assert 70 < sum(chosen) < 130


def test_training_transform_uses_probability_and_global_seed():
    transform = HistoricFilter(prob=0.2)
    np.random.seed(0)
    applied = [transform(sample(0, size=2))["historic"] for _ in range(1000)]
    assert 150 < sum(applied) < 250
    np.random.seed(0)
    assert applied == [transform(sample(0, size=2))["historic"] for _ in range(1000)]
    untouched = HistoricFilter(prob=0.0)(sample(0))
    assert untouched["historic"] is False and untouched["historic_mode"] is None
    assert np.array_equal(untouched["img"], sample(0)["img"])


def test_exempt_dataset_and_bgr_channel_order():
    exempt = HistoricFilter(prob=1.0, deterministic=True)(sample(1, dataset="urban1960"))
    assert exempt["historic"] is False
    assert np.array_equal(exempt["img"], sample(1)["img"])
    bgr = solid((50, 100, 200))  # the RGB pixel (200, 100, 50) stored as BGR
    transform = HistoricFilter(prob=1.0, modes=("sepia",), sepia_noise_max=0)
    out = transform({"img": bgr, "dataset_name": "rrsisd", "img_id": "1"})
    assert out["img"][0, 0].tolist() == [114, 147, 165]
    rgb = HistoricFilter(prob=1.0, modes=("sepia",), sepia_noise_max=0, channel_order="rgb")
    assert rgb({"img": solid((200, 100, 50)), "dataset_name": "x"})["img"][0, 0].tolist() == [
        165,
        147,
        114,
    ]


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="prob"):
        HistoricFilter(prob=1.5)
    with pytest.raises(ValueError, match="modes"):
        HistoricFilter(modes=("film",))
    with pytest.raises(KeyError, match="img_id"):
        HistoricFilter(prob=1.0, deterministic=True)({"img": solid((1, 2, 3)), "dataset_name": "x"})
