"""A trained model that travels: pretrained files found from anywhere and checked by sha256,
``aerialseg export-model`` folders that work when moved, and strict checkpoint matching in the API,
``aerialseg predict``, ``serve`` and ``tools/test.py``.

Everything runs the real tiny ClipSAM through the real loaders; predictions of a relocated model are
compared with those of the model loaded where it was trained.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from aerialseg.apis import ReferringSegmenter
from aerialseg.apis.trained_weights import check_trained_state
from aerialseg.cli import main
from aerialseg.engine import CheckpointError
from aerialseg.engine.pretrained import (
    PretrainedFilesError,
    path_sha256,
    pretrained_record,
    resolve_pretrained_files,
)
from aerialseg.models import CheckpointMismatchError
from aerialseg.models.tiny import write_tiny_checkpoints
from tests.product.scenes import multipart, png_bytes

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "clipsam" / "clipsam-tiny_aerial-d.py"
TEXTS = ["the red building in the top left", "all storage tanks"]


def scene() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(80, 120, size=(96, 128, 3), dtype=np.uint8)
    image[10:40, 12:50] = (220, 30, 30)
    return image


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A "training" checkout: the tiny config's relative pretrained paths, a checkpoint saved there
    with its config and the pretrained files' sha256 (what RecordPretrainedFilesHook stores)."""
    project = tmp_path_factory.mktemp("project")
    previous = os.getcwd()
    os.chdir(project)
    try:
        write_tiny_checkpoints("checkpoints/tiny")
        cfg = Config.fromfile(str(TINY_CONFIG))
        torch.manual_seed(0)
        segmenter = ReferringSegmenter(cfg)
        with torch.no_grad():  # "training" moved the trained tensors away from their init
            for parameter in segmenter.model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.05 * torch.randn_like(parameter))
        record = pretrained_record(resolve_pretrained_files(cfg.model))
        checkpoint = project / "work_dirs" / "tiny" / "iter_8.pth"
        checkpoint.parent.mkdir(parents=True)
        state = segmenter.model.state_dict()
        meta = {"cfg": cfg.pretty_text, "pretrained_files": record}
        torch.save({"state_dict": state, "meta": meta}, checkpoint)
        reference = segmenter.predict(scene(), TEXTS)
    finally:
        os.chdir(previous)
    return dict(
        project=project,
        checkpoint=checkpoint,
        pretrained=project / "checkpoints" / "tiny",
        reference=reference,
        segmenter=segmenter,
    )


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """Another working directory, without AERIALSEG_CHECKPOINTS."""
    folder = tmp_path / "imagery"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.delenv("AERIALSEG_CHECKPOINTS", raising=False)
    return folder


@pytest.fixture
def originals_gone(trained):
    """The pretrained files are not where the checkpoint recorded them (another machine)."""
    hidden = trained["pretrained"].with_name("tiny-away")
    os.rename(trained["pretrained"], hidden)
    yield hidden
    os.rename(hidden, trained["pretrained"])


def assert_same_prediction(result, reference) -> None:
    np.testing.assert_array_equal(result.masks, reference.masks)
    np.testing.assert_allclose(result.logits, reference.logits, atol=1e-5)


def test_api_from_another_directory_names_every_missing_file_and_how_to_fix_it(
    trained, elsewhere, originals_gone
):
    with pytest.raises(PretrainedFilesError) as info:
        ReferringSegmenter(None, trained["checkpoint"])
    message = str(info.value)
    assert "cannot find 2 pretrained file(s)" in message
    assert "model.vlm.pretrained = 'checkpoints/tiny/siglip'" in message
    assert "model.sam.checkpoint = 'checkpoints/tiny/sam_tiny.pth'" in message
    for fix in ("AERIALSEG_CHECKPOINTS", "--pretrained-root", "export-model"):
        assert fix in message


def test_api_finds_pretrained_files_under_a_root_from_another_directory(
    trained, elsewhere, originals_gone, monkeypatch
):
    shared = elsewhere / "shared"
    shutil.copytree(originals_gone, shared)
    by_argument = ReferringSegmenter(None, trained["checkpoint"], pretrained_root=str(shared))
    assert_same_prediction(by_argument.predict(scene(), TEXTS), trained["reference"])
    monkeypatch.setenv("AERIALSEG_CHECKPOINTS", str(shared))
    by_environment = ReferringSegmenter(None, trained["checkpoint"])
    assert by_environment.cfg.model.sam.checkpoint == str(shared / "sam_tiny.pth")
    assert_same_prediction(by_environment.predict(scene(), TEXTS), trained["reference"])


def test_other_weights_under_the_same_name_are_refused_by_sha256(
    trained, elsewhere, originals_gone
):
    other = write_tiny_checkpoints(elsewhere / "other", seed=1)
    with pytest.raises(PretrainedFilesError) as info:
        ReferringSegmenter(None, trained["checkpoint"], pretrained_root=str(elsewhere / "other"))
    message = str(info.value)
    assert other.sam_path in message and "not with the sha256 recorded at training" in message
    # an explicit override is the user's choice and is not checked against the record
    options = {"model.sam.checkpoint": other.sam_path, "model.vlm.pretrained": other.vlm_path}
    ReferringSegmenter(None, trained["checkpoint"], cfg_options=options)


def test_exported_folder_predicts_after_a_move_with_the_originals_gone(trained, elsewhere, capsys):
    export = elsewhere / "shared-model"
    code = main(["export-model", str(export), "--checkpoint", str(trained["checkpoint"])])
    out = capsys.readouterr().out
    assert code == 0 and "2 pretrained file(s)" in out
    manifest = json.loads((export / "manifest.json").read_text())
    for name, entry in manifest["pretrained"].items():
        assert entry["sha256"] == path_sha256(export / name)
    assert sorted(manifest["pretrained"]) == ["pretrained/sam_tiny.pth", "pretrained/siglip"]

    moved = elsewhere / "usb-stick" / "model"
    moved.parent.mkdir()
    shutil.move(export, moved)
    hidden = trained["pretrained"].with_name("tiny-away")
    os.rename(trained["pretrained"], hidden)
    try:
        Image.fromarray(scene()).save(elsewhere / "scene.png")
        argv = ["predict", "scene.png", "--checkpoint", str(moved), "--window", "0"]
        argv += ["--out-dir", "out", "--no-progress", *sum((["-e", t] for t in TEXTS), [])]
        assert main(argv) == 0
        api = ReferringSegmenter(None, moved / "model.pth")
    finally:
        os.rename(hidden, trained["pretrained"])
    for index, mask in enumerate(trained["reference"].masks):
        slug = ["the-red-building-in-the-top-left", "all-storage-tanks"][index]
        written = np.asarray(Image.open(f"out/scene.mask-{index}-{slug}.png")) == 255
        np.testing.assert_array_equal(written, mask)
    assert_same_prediction(api.predict(scene(), TEXTS), trained["reference"])
    assert main(["export-model", str(moved), "--checkpoint", str(trained["checkpoint"])]) == 2
    assert "exists" in capsys.readouterr().err


def test_serve_loads_an_exported_model_from_another_directory(trained, elsewhere, monkeypatch):
    from aerialseg.serve import BackgroundServer, ServeSettings, serve

    export = elsewhere / "model"
    assert main(["export-model", str(export), "--checkpoint", str(trained["checkpoint"])]) == 0
    apps = []
    monkeypatch.setattr("aerialseg.serve.server.uvicorn.run", lambda app, **kw: apps.append(app))
    serve(ServeSettings(checkpoint=str(export), window=0))
    body, content_type = multipart(
        {"expressions": "\n".join(TEXTS)}, {"image": ("scene.png", png_bytes(scene()))}
    )
    with BackgroundServer(apps[0]) as server:
        request = urllib.request.Request(
            server.url + "/api/predict", body, {"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            data = json.loads(response.read())
    areas = [int(mask.sum()) for mask in trained["reference"].masks]
    assert [p["area"] for p in data["predictions"]] == areas


def test_cli_warns_that_long_expressions_are_truncated(trained, elsewhere, capsys):
    Image.fromarray(scene()).save(elsewhere / "scene.png")
    long_text = " ".join(["the large red building next to the pool"] * 12)
    argv = ["predict", "scene.png", "-e", "red", "-e", long_text, "--out-dir", "o"]
    argv += ["--checkpoint", str(trained["checkpoint"]), "--window", "0", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "aerialseg predict: warning: expression 2 has " in captured.err
    assert "the text tower reads only the first 64" in captured.err
    assert "warning" not in captured.out


def test_predict_refuses_a_file_that_is_not_a_checkpoint(trained, elsewhere, capsys):
    Image.fromarray(scene()).save(elsewhere / "scene.png")
    code = main(["predict", "scene.png", "-e", "x", "--checkpoint", "scene.png", "--out-dir", "o"])
    error = capsys.readouterr().err
    assert code == 1 and "'scene.png' is not a torch checkpoint" in error
    assert "arbitrary code" not in error and len(error.strip().splitlines()) == 1


def test_api_refuses_a_checkpoint_with_missing_or_unexpected_keys(trained, tmp_path):
    state = torch.load(trained["checkpoint"], weights_only=True)
    prompter_key = next(key for key in state["state_dict"] if key.startswith("prompter."))
    state["state_dict"].pop(prompter_key)
    state["state_dict"]["head.extra.weight"] = torch.zeros(3)
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    options = {
        "model.vlm.pretrained": str(trained["pretrained"] / "siglip"),
        "model.sam.checkpoint": str(trained["pretrained"] / "sam_tiny.pth"),
    }
    with pytest.raises(CheckpointMismatchError) as info:
        ReferringSegmenter(None, broken, cfg_options=options)
    message = str(info.value)
    group = ".".join(prompter_key.split(".")[:2]) + ".*"  # keys are grouped by module
    assert f"1 missing keys: {group} (1); e.g. {prompter_key}" in message
    assert "1 unexpected keys: head.extra.* (1); e.g. head.extra.weight" in message
    assert "--allow-partial" in message

    partial = ReferringSegmenter(None, broken, cfg_options=options, allow_partial=True)
    loaded = dict(partial.model.named_parameters())
    reference = dict(trained["segmenter"].model.named_parameters())
    other_key = next(k for k in state["state_dict"] if k.startswith("prompter.") and k in loaded)
    torch.testing.assert_close(loaded[other_key], reference[other_key])
    # the frozen tensors a training checkpoint leaves out are exactly the declared ones
    assert check_trained_state(trained["segmenter"].model, state["state_dict"]) == [
        f"1 missing keys: {group} (1); e.g. {prompter_key}",
        "1 unexpected keys: head.extra.* (1); e.g. head.extra.weight",
    ]


def test_tools_test_refuses_sam_weights_with_the_key_list(trained, tmp_path, capsys):
    from aerialseg.evaluation import test_main

    sam = str(trained["pretrained"] / "sam_tiny.pth")
    argv = [str(TINY_CONFIG), sam, "--work-dir", str(tmp_path / "work"), "--cfg-options"]
    argv += [f"model.vlm.pretrained={trained['pretrained'] / 'siglip'}"]
    argv += [f"model.sam.checkpoint={sam}"]
    with pytest.raises(SystemExit) as exit_:
        test_main(argv)
    assert exit_.value.code == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: checkpoint '" in error
    assert "174 missing keys: " in error and "prompter.reduce.* (3)" in error
    assert "vlm.text.* (18)" in error  # the trained LoRA and SigLIP text tensors
    assert "174 unexpected keys: " in error and "image_encoder.blocks.* (28)" in error
    assert "looks like an official SAM checkpoint" in error
    assert not list((tmp_path / "work").rglob("benchmark*"))


def test_checkpoint_reading_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="is not a torch checkpoint"):
        ReferringSegmenter(None, text)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(CheckpointError, match="holds a list, not a checkpoint"):
        ReferringSegmenter(None, listing)
