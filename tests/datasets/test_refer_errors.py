"""REFER file reading (``refs(*).p`` + instances JSON): every refusal names the file and the
problem; Python 2 pickles, plain-string sentences and foreign splits are handled as documented."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
from mmengine.logging import MMLogger

from aerialseg.datasets.base import DatasetFormatError
from aerialseg.datasets.refer_io import (
    load_coco_json,
    load_refer,
    load_refs_pickle,
    report_foreign_splits,
    sentence_text,
)

REF = {"ref_id": 7, "ann_id": 1, "image_id": 1, "split": "val", "sentences": [{"raw": "a car"}]}
INSTANCES = {
    "images": [{"id": 1, "file_name": "1.jpg", "width": 4, "height": 4}],
    "annotations": [{"id": 1, "image_id": 1}],
    "categories": [{"id": 3, "name": "ship"}],
}


def _pickle(path: Path, data, protocol: int = pickle.DEFAULT_PROTOCOL) -> str:
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return str(path)


def _refused(call) -> str:
    with pytest.raises(DatasetFormatError) as caught:
        call()
    return str(caught.value)


def test_refs_pickles_are_checked_and_named(tmp_path: Path):
    path = str(tmp_path / "refs.p")
    with pytest.raises(FileNotFoundError) as caught:
        load_refs_pickle(path)
    assert str(caught.value) == f"refs pickle file not found: '{path}'"
    Path(path).write_bytes(b"")
    assert _refused(lambda: load_refs_pickle(path)) == f"{path}: the refs pickle is empty (0 bytes)"
    _pickle(Path(path), [])
    assert _refused(lambda: load_refs_pickle(path)) == (
        f"{path}: the refs pickle is empty (an empty list, no refs)"
    )
    for not_refs in ({"refs": []}, [REF, "x"]):
        _pickle(Path(path), not_refs)
        assert _refused(lambda: load_refs_pickle(path)) == f"{path}: expected a list of ref dicts"
    _pickle(Path(path), [REF, {"ann_id": 2, "sentences": []}])
    assert _refused(lambda: load_refs_pickle(path)) == (
        f"{path}: ref #1 lacks fields ['image_id', 'split']"
    )
    _pickle(Path(path), [REF, Path("x")])  # a class: refused before anything runs
    message = _refused(lambda: load_refs_pickle(path))
    assert message.startswith(f"{path}: not a readable refs pickle (refuses to load pathlib.")
    assert message.endswith(": a refs file holds only lists, dicts and strings)")


def test_python2_pickles_with_byte_strings_are_read_as_latin1(tmp_path: Path):
    # What Python 2's cPickle writes for {'split': 'val', 'sentences': [{'raw': 'caf\xe9'}]}:
    # SHORT_BINSTRING values, which Python 3 decodes with the given encoding.
    data = (
        b"\x80\x02]q\x00}q\x01(U\x06ann_idq\x02K\x01U\x08image_idq\x03K\x01U\x05splitq\x04"
        b"U\x03valq\x05U\tsentencesq\x06]q\x07}q\x08U\x03rawq\tU\x04caf\xe9q\nsaua."
    )
    path = tmp_path / "refs(unc).p"
    path.write_bytes(data)
    (ref,) = load_refs_pickle(str(path))
    assert ref == {"ann_id": 1, "image_id": 1, "split": "val", "sentences": [{"raw": "café"}]}


def test_instances_json_is_checked_and_named(tmp_path: Path):
    path = tmp_path / "instances.json"
    with pytest.raises(FileNotFoundError, match="RRSIS-D instances file not found"):
        load_coco_json(str(path), "RRSIS-D instances")
    path.write_text("{")
    assert _refused(lambda: load_coco_json(str(path), "x")).startswith(f"{path}: not valid JSON (")
    path.write_bytes(b'{"images": "\xff"}')
    assert "not valid JSON" in _refused(lambda: load_coco_json(str(path), "x"))
    path.write_text(json.dumps({"images": [], "annotations": {}}))
    assert _refused(lambda: load_coco_json(str(path), "x")) == f"{path}: missing list 'annotations'"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "é.jpg"}], "annotations": []}))
    assert load_coco_json(str(path), "x")["images"][0]["file_name"] == "é.jpg"


def test_lookups_name_the_ref_and_both_files(tmp_path: Path):
    refs = _pickle(tmp_path / "refs.p", [REF, {**REF, "ref_id": 8, "image_id": 5}])
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps(INSTANCES))
    refer = load_refer(refs, str(instances), "RRSIS-D")
    assert (refer.refs_path, refer.instances_path) == (refs, str(instances))
    assert refer.image(REF)["file_name"] == "1.jpg"
    assert refer.annotation(REF, 1) == {"id": 1, "image_id": 1}
    assert refer.category_name(3) == "ship" and refer.category_name(9) == "9"
    assert _refused(lambda: refer.image(refer.refs[1])) == (
        f"{refs}: ref 8 names image_id 5, which is not in {instances}"
    )
    assert _refused(lambda: refer.annotation({"ann_id": 4}, 4)) == (
        f"{refs}: ref ? names ann_id 4, which is not in {instances}"
    )
    without_categories = {key: INSTANCES[key] for key in ("images", "annotations")}
    instances.write_text(json.dumps(without_categories))
    assert load_refer(refs, str(instances), "RRSIS-D").categories == {}
    with pytest.raises(FileNotFoundError, match="NWPU instances file not found"):
        load_refer(refs, str(tmp_path / "missing.json"), "NWPU")


def test_sentence_fields():
    assert sentence_text({"raw": " The Car ", "sent": "the car"}) == "The Car"
    assert sentence_text({"raw": "The Car", "sent": " the car "}, "sent") == "the car"
    assert sentence_text("  a plain string ") == "a plain string"
    assert sentence_text({"raw": None}) == "" and sentence_text(3) == ""
    with pytest.raises(ValueError) as caught:
        sentence_text({"raw": "x"}, "text")
    assert str(caught.value) == "text_field must be one of ('raw', 'sent'), got 'text'"
    assert _refused(lambda: sentence_text({"sent_id": 4, "sent": "x"})) == (
        "sentence 4 has no 'raw' field (it has ['sent']: set text_field='sent')"
    )
    assert _refused(lambda: sentence_text({"tokens": []}, "sent")) == (
        "sentence ? has no 'sent' field"
    )


def test_foreign_splits_are_reported_with_their_first_ids():
    logger = MMLogger.get_current_instance()
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append((record.levelno, record.getMessage()))

    handler = Keep()
    logger.addHandler(handler)
    try:
        refs = [{"split": "val", "ref_id": 0}] + [
            {"split": "testA", "ref_id": i} for i in range(11)
        ]
        refs += [{"split": "testB"}, {"split": "testB"}] + [{"split": "testC", "ref_id": 0}] * 10
        report_foreign_splits(refs, ("train", "val"), "refs.p")
        report_foreign_splits([{"split": "val"}], ("train", "val"), "quiet.p")
    finally:
        logger.removeHandler(handler)
    assert messages == [
        (
            logging.WARNING,
            "refs.p: refs with a split other than ('train', 'val') are not loaded: "
            "'testA': 11 refs (ids 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ...); "
            "'testB': 2 refs (ids #12, #13); "
            "'testC': 10 refs (ids 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)",
        )
    ]
