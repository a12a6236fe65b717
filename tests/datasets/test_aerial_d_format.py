"""Aerial-D patch XML: round trips, the release's repr form, and clear errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from aerialformats.aerial_d import (
    AerialDFormatError,
    Expression,
    RLEMask,
    parse_rle_text,
    read_patch_xml,
    remove_stale_temp_files,
    rle_run_lengths,
    write_patch_xml,
)
from tests.datasets.fixtures import box_mask, make_aerial_d_patches, write_release_style_xml


def test_write_then_read_round_trips_every_field(tmp_path):
    patch = make_aerial_d_patches()["train"][0]
    path = write_patch_xml(patch, tmp_path / "ann" / "P0001_patch_000000.xml")
    loaded = read_patch_xml(path)
    assert loaded == patch
    vehicle = loaded.objects[0]
    assert vehicle.attributes == {"possible_colors": "light,dark"}
    assert [e.kind for e in vehicle.expressions] == ["original", "original", "enhanced", "unique"]
    enhanced = vehicle.expressions[2]
    assert (enhanced.source_id, enhanced.model, enhanced.prompt_version, enhanced.time) == (
        "0",
        "gemma-aerial-12b",
        "v2",
        "2026-11-24T10:00:00Z",
    )
    assert int(vehicle.mask.decode().sum()) == 35
    assert [g.target_type for g in loaded.groups] == ["semantic", "group"]
    assert loaded.groups[1].instance_ids == ["1", "5"]
    assert loaded.domain == "isaid"
    assert list(tmp_path.joinpath("ann").iterdir()) == [path]  # no temp file left


def test_segmentation_is_written_as_json_text(tmp_path):
    patch = make_aerial_d_patches()["val"][0]
    path = write_patch_xml(patch, tmp_path / "p.xml")
    text = ET.parse(path).getroot().find("object/segmentation").text
    assert text.startswith('{"size": [48, 48], "counts": "')


def test_reads_the_release_repr_form(tmp_path):
    patch = make_aerial_d_patches()["train"][0]
    path = write_release_style_xml(tmp_path / "release.xml", patch)
    assert "'counts': b'" in path.read_text()
    loaded = read_patch_xml(path)
    assert [o.mask for o in loaded.objects] == [o.mask for o in patch.objects]
    assert [g.mask for g in loaded.groups] == [g.mask for g in patch.groups]
    assert [g.id for g in loaded.groups] == ["1000001", "3001"]  # the second <groups> is ignored
    assert [g.target_type for g in loaded.groups] == ["semantic", "group"]
    texts = [e.text for e in loaded.objects[0].expressions]
    assert texts == [e.text for e in patch.objects[0].expressions]


def test_rle_parser_handles_escapes_and_uncompressed_counts():
    # A first run of 44 pixels encodes as the chunk 44 + 48 = 92, a backslash, which repr doubles.
    flat = np.ones(900, np.uint8)
    flat[:44] = 0
    mask = flat.reshape((30, 30), order="F")  # runs are counted in column-major order
    rle = RLEMask.from_mask(mask)
    assert "\\" in rle.counts
    text = str({"size": [30, 30], "counts": rle.counts.encode()})
    assert "\\\\" in text
    assert parse_rle_text(text) == rle
    assert np.array_equal(parse_rle_text(text).decode(), mask)
    runs = parse_rle_text("{'size': [2, 3], 'counts': [1, 4, 1]}")
    assert runs.decode().sum() == 4
    assert rle_run_lengths(runs.counts).tolist() == [1, 4, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('true')", "not a {size, counts} mapping"),
        ("{'size': [4, 4], 'counts': b'1'}", "cover 1 pixels"),
        ("{'counts': b'1'}", "no 'size'"),
        ("{'size': [4, 4]}", "no 'counts'"),
        ("{'size': [2, 2], 'counts': [1, 1]}", "sum to 2"),
        ("{'size': [2, 2], 'counts': b'~~'}", "outside the COCO RLE alphabet"),
    ],
)
def test_rle_parser_rejects_bad_text(text, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        parse_rle_text(text)


def _corrupt(tmp_path, old: str, new: str):
    patch = make_aerial_d_patches()["train"][0]
    path = write_patch_xml(patch, tmp_path / "bad.xml")
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<name>small vehicle</name>", "", r"object #0 \(id=1\): missing field <name>"),
        (
            "<xmin>3</xmin>",
            "<xmin>left</xmin>",
            r"object #0 \(id=1\): field <xmin> is not a number",
        ),
        ('"counts": "', '"counts": "~', r"object #0 \(id=1\): field <segmentation>"),
        (
            '<expression id="0">the plane',
            "<expression>the plane",
            r"object #1 \(id=2\) expression #0",
        ),
        ('type="unique"', 'type="fancy"', "expression type must be one of"),
        ("<size>2</size>", "<size>two</size>", r"group #0 \(id=1000001\): field <size>"),
        ("<filename>P0001_patch_000000.png</filename>", "", "annotation: missing field <filename>"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path, old, new, message):
    path = _corrupt(tmp_path, old, new)
    with pytest.raises(AerialDFormatError, match=message) as info:
        read_patch_xml(path)
    assert str(path) in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(AerialDFormatError, match="annotation file not found"):
        read_patch_xml(tmp_path / "absent.xml")
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><filename>x.png</filename>")
    with pytest.raises(AerialDFormatError, match="not well-formed XML"):
        read_patch_xml(broken)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    patches = make_aerial_d_patches()
    path = write_patch_xml(patches["val"][0], tmp_path / "p.xml")
    before = path.read_bytes()

    def explode(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ET.ElementTree, "write", explode)
    with pytest.raises(OSError, match="disk full"):
        write_patch_xml(patches["train"][0], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.xml"]


def test_expression_contract():
    with pytest.raises(ValueError, match="needs an id"):
        Expression("a ship")
    with pytest.raises(ValueError, match="not both"):
        Expression("a ship", id="0", type="unique")
    with pytest.raises(ValueError, match="empty"):
        Expression("  ", id="0")
    assert Expression("a ship", type="unique").kind == "unique"
    assert Expression("a ship", id=3).id == "3"  # ids from integer-keyed records become str


def test_from_mask_round_trip():
    mask = box_mask(20, 30, 3, 4, 9, 25)
    rle = RLEMask.from_mask(mask)
    assert rle.size == (20, 30)
    assert np.array_equal(rle.decode(), mask)
    assert int(rle_run_lengths(rle.counts).sum()) == 600


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    patch = make_aerial_d_patches()["train"][0]
    path = write_patch_xml(patch, tmp_path / "P0001_patch_000000.xml")
    stale = tmp_path / ".P0001_patch_000000.xml.k3j9x.tmp"
    stale.write_text("<annotation>half written")
    other = tmp_path / ".P0002_patch_000000.xml.abcde.tmp"  # another file's temp is not touched
    other.write_text("x")

    assert remove_stale_temp_files(path) == [stale]
    assert not stale.exists() and other.exists()
    assert read_patch_xml(path) == patch
