"""Rendering of the two request images, target records and the versioned prompt builder."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from llm_fixtures import make_config, write_patch
from PIL import Image

from aerialseg.datasets.aerial_d_format import Expression, read_patch_xml, write_patch_xml
from llm.config import RenderConfig
from llm.prompt import build_prompt, hf_messages, openai_messages, prompt_version
from llm.render import RenderError, crop_box, load_patch_image, render_target
from llm.targets import discover_annotations, stratified_sample, targets_of_patch

RED = np.array([255, 0, 0], dtype=np.uint8)


def _gray(size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), 100, dtype=np.uint8)


def _mask(box, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return mask


def test_outline_draws_outside_the_box_and_crop_keeps_the_target_whole():
    settings = RenderConfig(image_size=64, line_width=2, crop_margin=1.5, crop_min_side=8)
    image = _gray()
    box = (2, 30, 12, 40)  # touches the left edge once the outline is added
    rendered = render_target(image, _mask(box), "instance", settings, bbox=box)
    first = np.asarray(rendered.first)
    # A 2-px red frame just outside the box; the target's own pixels are not painted.
    assert (first[28:30, 2:12] == RED).all() and (first[40:42, 2:12] == RED).all()
    assert (first[30:40, 0:2] == RED).all() and (first[30:40, 12:14] == RED).all()
    assert (first[30:40, 2:12] == 100).all()
    assert (first[0:20] == 100).all()
    # Crop: side 1.5 x 10 = 15 px centred on the box; the part left of the patch is black.
    assert crop_box(box, settings) == (-1, 27, 14, 42)
    tight = RenderConfig(image_size=64, crop_margin=3.0, crop_min_side=8)
    left, top, right, bottom = crop_box(box, tight)
    assert (right - left, bottom - top) == (30, 30) and left < 0
    crop = np.asarray(render_target(image, _mask(box), "instance", tight, bbox=box).second)
    assert (crop[:, :8] == 0).all()  # (0 - left) / 30 * 64 ≈ 17 px of padding, resampled
    assert (crop[16:48, 24:44] == 100).all()  # the target region stays clean (no outline)
    assert rendered.mode == "outline" and rendered.first.size == (64, 64)


def test_large_targets_are_never_cut_and_groups_get_one_box_per_component():
    settings = RenderConfig(image_size=32, line_width=1, crop_margin=1.0, crop_min_side=8)
    big = (0, 0, 60, 50)
    assert crop_box(big, settings)[2] - crop_box(big, settings)[0] >= 62
    mask = _mask((4, 4, 10, 10)) | _mask((40, 40, 50, 52))
    rendered = render_target(_gray(), mask, "group", settings.model_copy(update={"image_size": 64}))
    first = np.asarray(rendered.first)
    assert (first[3, 4:10] == RED).all() and (first[39, 40:50] == RED).all()
    assert (first[20, 20] == 100).all()  # no union box across the gap


def test_semantic_overlay_tints_only_the_region_and_keeps_a_clean_copy():
    settings = RenderConfig(image_size=64, overlay_alpha=0.5)
    mask = _mask((0, 20, 64, 36))
    rendered = render_target(_gray(), mask, "semantic", settings)
    first, second = np.asarray(rendered.first), np.asarray(rendered.second)
    assert rendered.mode == "overlay"
    assert tuple(first[25, 10]) == (178, 50, 50)  # 0.5 * 100 + 0.5 * (255, 0, 0), rounded
    assert (first[:20] == 100).all() and (second == 100).all()


def test_rendering_is_deterministic_and_resized_to_the_fixed_size():
    settings = RenderConfig(image_size=48)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    box = (10, 10, 20, 30)
    a = render_target(image, _mask(box), "instance", settings, bbox=box)
    b = render_target(image.copy(), _mask(box), "instance", settings, bbox=box)
    assert a.digest == b.digest and a.first_bytes == b.first_bytes
    assert Image.open(io.BytesIO(a.second_bytes)).size == (48, 48)
    jpeg = render_target(
        image,
        _mask(box),
        "instance",
        settings.model_copy(update={"image_format": "jpeg"}),
        bbox=box,
    )
    assert jpeg.mime == "image/jpeg" and jpeg.first_bytes[:2] == b"\xff\xd8"


def test_bad_images_and_geometry_raise_clear_errors(tmp_path):
    settings = RenderConfig(image_size=64)
    with pytest.raises(RenderError, match="not found"):
        load_patch_image(tmp_path / "missing.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(RenderError, match="deep.png.*unsupported image mode"):
        load_patch_image(tmp_path / "deep.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(RenderError, match="broken.png: cannot read image"):
        load_patch_image(tmp_path / "broken.png")
    with pytest.raises(RenderError, match="mask is"):
        render_target(_gray(), np.ones((32, 32), bool), "group", settings)
    with pytest.raises(RenderError, match="outside"):
        render_target(_gray(), _mask((0, 0, 4, 4)), "instance", settings, bbox=(60, 0, 70, 4))
    with pytest.raises(RenderError, match="empty"):
        render_target(_gray(), np.zeros((64, 64), bool), "semantic", settings)


def test_targets_take_only_rule_based_originals(tmp_path):
    path = write_patch(tmp_path, "P0000_patch", seed=0)
    annotation = read_patch_xml(path)
    annotation.objects[0].expressions.append(
        Expression("an llm paraphrase", type="enhanced", source_id="0", model="m")
    )
    write_patch_xml(annotation, path)
    (file,) = discover_annotations(tmp_path)
    targets = [t for t, _ in targets_of_patch(file.read(), file)]
    assert [t.uid for t in targets] == [
        "train/annotations/P0000_patch#object/1",
        "train/annotations/P0000_patch#object/2",
        "train/annotations/P0000_patch#group/5",
        "train/annotations/P0000_patch#group/1000001",
    ]  # object 3 has no expression
    assert [o.text for o in targets[0].originals] == ["the small vehicle in the top left"]
    assert [t.kind for t in targets] == ["instance", "instance", "group", "semantic"]
    assert targets[0].image_path == tmp_path / "train" / "images" / "P0000_patch.png"
    assert targets[0].category_text == "small vehicle"
    picked = stratified_sample(targets * 1, 3, seed=1)
    assert len({t.kind for t in picked}) == 3  # one of each kind before any repeats
    assert stratified_sample(targets, 3, seed=1) == picked


def test_prompt_is_shared_and_versioned(tmp_path):
    write_patch(tmp_path, "P0000_patch", seed=0)
    (file,) = discover_annotations(tmp_path)
    target = [t for t, _ in targets_of_patch(file.read(), file)][1]
    config = make_config("http://unused")
    images = render_target(
        load_patch_image(target.image_path),
        target.mask.decode(),
        target.kind,
        config.render,
        target.bbox,
    )
    prompt = build_prompt(target, images.mode, config)
    assert "1. the small vehicle in the bottom right\n2. the lowest small vehicle" in prompt.user
    assert "category small vehicle" in prompt.user and "red rectangles" in prompt.system
    assert "exactly 2 new expressions" in prompt.system
    openai = openai_messages(prompt, images)
    url = openai[1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == images.first_bytes
    hf = hf_messages(prompt, images.first, images.second)
    assert hf[0]["content"][0]["text"] == openai[0]["content"]
    assert hf[1]["content"][2]["text"] == openai[1]["content"][2]["text"]
    assert [p["type"] for p in hf[1]["content"]] == ["image", "image", "text"]
    # The version follows everything that changes what the model sees.
    assert prompt.version == prompt_version(config) and prompt.version.startswith("v1-")
    other_render = config.model_copy(
        update={"render": config.render.model_copy(update={"line_width": 5})}
    )
    other_rules = make_config("http://unused", validation={"max_words": 30})
    assert len({prompt_version(c) for c in (config, other_render, other_rules)}) == 3
    assert prompt_version(make_config("http://elsewhere")) == prompt.version
