"""Pretrained-file bookkeeping: which config entries are files, their sha256, the search order."""

from __future__ import annotations

import hashlib
import os

import pytest
from mmseg.registry import MODELS

from aerialseg.engine.pretrained import (
    PretrainedFilesError,
    path_sha256,
    pretrained_entries,
    resolve_pretrained_files,
)


@MODELS.register_module(force=True)
class DeclaresItsFiles:
    """A segmentor whose pretrained file sits under a key with no conventional name."""

    pretrained_config_keys = ("backbone.weights_file",)


def test_entries_are_found_by_name_anywhere_and_by_the_model_declaration():
    model = dict(
        type="DeclaresItsFiles",
        backbone=dict(weights_file="ckpts/backbone.bin", checkpoint=True),  # a flag, not a path
        heads=[dict(init_cfg=dict(type="Pretrained", checkpoint="ckpts/head.pth"))],
        vlm=dict(pretrained="ckpts/siglip"),
        data_preprocessor=dict(vlm_path="ckpts/siglip"),
    )
    assert pretrained_entries(model) == {
        "heads.0.init_cfg.checkpoint": "ckpts/head.pth",
        "vlm.pretrained": "ckpts/siglip",
        "data_preprocessor.vlm_path": "ckpts/siglip",
        "backbone.weights_file": "ckpts/backbone.bin",
    }


def test_folder_digest_covers_names_and_contents_but_not_hidden_files(tmp_path):
    folder = tmp_path / "siglip"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "model.safetensors").write_bytes(b"\x00" * 1000)
    referee = hashlib.sha256()
    for name, data in (("config.json", b"{}"), ("sub/model.safetensors", b"\x00" * 1000)):
        referee.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    assert path_sha256(folder) == referee.hexdigest()
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")
    assert path_sha256(folder) == referee.hexdigest()
    (folder / "config.json").write_text('{"a": 1}')
    assert path_sha256(folder) != referee.hexdigest()
    file = folder / "sub" / "model.safetensors"
    assert path_sha256(file) == hashlib.sha256(b"\x00" * 1000).hexdigest()


def test_search_order_and_one_error_for_all_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        root.mkdir()
        (root / "sam.pth").write_bytes(root.name.encode())
    monkeypatch.delenv("AERIALSEG_CHECKPOINTS", raising=False)
    model = dict(sam=dict(checkpoint="checkpoints/sam.pth"), vlm=dict(pretrained="siglip"))
    with pytest.raises(PretrainedFilesError) as info:
        resolve_pretrained_files(model, checkpoint=str(tmp_path / "work" / "iter_1.pth"))
    message = str(info.value)  # both named, with where they were looked for
    assert message.startswith("cannot find 2 pretrained file(s) of this model: ")
    assert "model.sam.checkpoint = 'checkpoints/sam.pth'" in message
    assert f"'{tmp_path / 'work' / 'checkpoints' / 'sam.pth'}'" in message  # checkpoint's folder
    assert "model.vlm.pretrained = 'siglip'" in message

    monkeypatch.setenv("AERIALSEG_CHECKPOINTS", f"{second}{os.pathsep}{first}")

    (tmp_path / "siglip").mkdir()  # relative to the working directory: used as written
    files = {f.keys[0]: f for f in resolve_pretrained_files(model)}
    assert files["sam.checkpoint"].resolved == str(second / "sam.pth")  # env order
    assert files["vlm.pretrained"].resolved == str(tmp_path / "siglip")
    files = {f.keys[0]: f for f in resolve_pretrained_files(model, roots=[first])}
    assert files["sam.checkpoint"].resolved == str(first / "sam.pth")  # --pretrained-root first
    # a recorded digest picks the matching file among the candidates
    recorded = {"sam.checkpoint": {"sha256": hashlib.sha256(b"first").hexdigest()}}
    files = {f.keys[0]: f for f in resolve_pretrained_files(model, recorded=recorded)}
    assert files["sam.checkpoint"].resolved == str(first / "sam.pth")
