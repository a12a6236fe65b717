"""Aerial-D patch XML: round trips, the release's repr form, and clear errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from aerialformats.aerial_d import (
    AerialDFormatError,
    AerialGroup,
    AerialObject,
    Expression,
    GroupRelationship,
    PatchAnnotation,
    RLEMask,
    domain_from_filename,
    group_target_type_from_id,
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


# -- the exact file format and messages (mutation gate, issue 11) ---------------------------------

SMALL_MASK = box_mask(3, 4, 1, 0, 3, 2)  # column-major runs 1, 2, 1, 2, 6 -> COCO "12105"
SMALL_RLE = '{"size": [3, 4], "counts": "12105"}'


def _small_patch() -> PatchAnnotation:
    """Every element the writer knows, with integer ids (written as text) and a half centroid."""
    mask = RLEMask.from_mask(SMALL_MASK)
    ship = AerialObject(
        id=5,
        category="ship",
        bbox=(0, 1, 2, 3),
        mask=mask,
        area=4,
        attributes={"possible_colors": "white"},
        expressions=[
            Expression("the ship", id=0),
            Expression(
                "a white ship",
                type="enhanced",
                source_id=0,
                model="m",
                prompt_version="v1",
                time="t",
            ),
        ],
    )
    ships = AerialGroup(
        id=1000002,
        category="ship",
        mask=mask,
        instance_ids=[5],
        centroid=(1.5, 2.0),
        attributes={"grid_position": "top"},
        expressions=[Expression("all ships", id="0")],
    )
    pair = AerialGroup(id="7", category="ship", mask=mask, size=2, target_type="semantic")
    return PatchAnnotation(
        filename="D0001_patch_1.png",
        width=4,
        height=3,
        objects=[ship],
        groups=[ships, pair],
        group_relationships=[GroupRelationship("1000002", "7", "left", "near")],
    )


EXPECTED_XML = f"""<?xml version='1.0' encoding='utf-8'?>
<annotation>
  <filename>D0001_patch_1.png</filename>
  <size>
    <width>4</width>
    <height>3</height>
  </size>
  <object>
    <id>5</id>
    <name>ship</name>
    <bndbox>
      <xmin>0</xmin>
      <ymin>1</ymin>
      <xmax>2</xmax>
      <ymax>3</ymax>
    </bndbox>
    <segmentation>{SMALL_RLE}</segmentation>
    <area>4</area>
    <possible_colors>white</possible_colors>
    <expressions>
      <expression id="0">the ship</expression>
      <expression type="enhanced" source_id="0" model="m" prompt_version="v1" time="t">a white \
ship</expression>
    </expressions>
  </object>
  <groups>
    <group>
      <id>1000002</id>
      <category>ship</category>
      <size>1</size>
      <instance_ids>5</instance_ids>
      <centroid>
        <x>1.5</x>
        <y>2</y>
      </centroid>
      <segmentation>{SMALL_RLE}</segmentation>
      <target_type>semantic</target_type>
      <grid_position>top</grid_position>
      <expressions>
        <expression id="0">all ships</expression>
      </expressions>
    </group>
    <group>
      <id>7</id>
      <category>ship</category>
      <size>2</size>
      <segmentation>{SMALL_RLE}</segmentation>
      <target_type>semantic</target_type>
      <expressions />
    </group>
    <relationships>
      <relationship>
        <source_id>1000002</source_id>
        <target_id>7</target_id>
        <direction>left</direction>
        <distance>near</distance>
      </relationship>
    </relationships>
  </groups>
</annotation>"""


def test_writer_output_is_exactly_the_documented_format(tmp_path):
    patch = _small_patch()
    path = write_patch_xml(patch, tmp_path / "D0001_patch_1.xml")
    assert path == tmp_path / "D0001_patch_1.xml"
    assert path.read_text(encoding="utf-8") == EXPECTED_XML
    assert read_patch_xml(path) == patch
    assert (patch.num_expressions, patch.domain) == (3, "deepglobe")
    with pytest.raises(ValueError, match="attribute 'area' clashes with a field of the format"):
        patch.objects[0].attributes["area"] = "5"
        write_patch_xml(patch, tmp_path / "clash.xml")


def test_reader_fills_optional_fields_like_the_release(tmp_path):
    path = tmp_path / "L0002_patch_3.xml"
    path.write_text(
        "<annotation><filename> L0002_patch_3.png </filename>"
        "<size><width>4</width><height>3.0</height></size>"
        "<object><id>9</id><name>building</name><bndbox><xmin>0.0</xmin><ymin>1</ymin>"
        "<xmax>2</xmax><ymax>3</ymax></bndbox>"
        "<segmentation>{'size': [3, 4], 'counts': b'12105'}</segmentation><area> </area>"
        "<note/><nested><inner>x</inner></nested>"
        '<expressions><expression id="1"> the building </expression></expressions></object>'
        "<groups><group><id>1500000</id><category>building</category>"
        f"<instance_ids> 9, ,10 </instance_ids><segmentation>{SMALL_RLE}</segmentation>"
        "<target_type> group </target_type></group>"
        "<group><id>12</id><category>building</category><size>2</size>"
        f"<centroid><x>1</x><y>0.25</y></centroid><segmentation>{SMALL_RLE}</segmentation>"
        '<target_type></target_type><expressions><expression type="unique" model="gemma">'
        "the two buildings</expression></expressions></group>"
        "<relationships><relationship><source_id>1500000</source_id><target_id>12</target_id>"
        "<direction>above</direction></relationship></relationships></groups>"
        "<groups><group><id>99</id></group></groups></annotation>",
        encoding="utf-8",
    )
    mask = RLEMask(size=(3, 4), counts="12105")
    assert read_patch_xml(path) == PatchAnnotation(
        filename="L0002_patch_3.png",
        width=4,
        height=3,
        objects=[
            AerialObject(
                id="9",
                category="building",
                bbox=(0, 1, 2, 3),
                mask=mask,
                expressions=[Expression("the building", id="1")],
                area=None,  # an empty <area>
                attributes={"note": ""},  # <nested> has children: not a simple attribute
            )
        ],
        groups=[
            AerialGroup(
                id="1500000",
                category="building",
                mask=mask,
                size=1,
                instance_ids=["9", "10"],
                target_type="group",  # stated, although the id is in the semantic range
            ),
            AerialGroup(
                id="12",
                category="building",
                mask=mask,
                size=2,
                centroid=(1.0, 0.25),
                expressions=[Expression("the two buildings", type="unique", model="gemma")],
                target_type="group",  # empty: from the id
            ),
        ],
        group_relationships=[GroupRelationship("1500000", "12", "above", "")],
    )


SMALL_XML = (
    "<annotation><filename>P1.png</filename><size><width>4</width><height>3</height></size>"
    "<object><id>5</id><name>ship</name><bndbox><xmin>0</xmin><ymin>1</ymin><xmax>2</xmax>"
    f"<ymax>3</ymax></bndbox><segmentation>{SMALL_RLE}</segmentation><area>4</area>"
    '<expressions><expression id="0">the ship</expression></expressions></object>'
    "<groups><group><id>7</id><category>ship</category><size>1</size>"
    f"<centroid><x>1</x><y>2</y></centroid><segmentation>{SMALL_RLE}</segmentation>"
    '<target_type>group</target_type><expressions><expression id="0">the ships</expression>'
    "</expressions></group><relationships><relationship><source_id>7</source_id>"
    "<target_id>7</target_id><direction>left</direction></relationship></relationships>"
    "</groups></annotation>"
)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("<annotation>", "<patch>", "not well-formed XML (mismatched tag: line 1, column "),
        (SMALL_XML, SMALL_XML.replace("annotation>", "patch>"), "root: expected <annotation>, "
         "found <patch>"),
        ("<size><width>4</width><height>3</height></size>", "", "annotation: missing field <size>"),
        ("<width>4", "<width>four", "annotation size: field <width> is not a number: 'four'"),
        ("<bndbox><xmin>0</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax></bndbox>", "",
         "object #0 (id=5): missing field <bndbox>"),
        ("<xmin>0", "<xmin>zero", "object #0 (id=5): field <xmin> is not a number: 'zero'"),
        ("<id>5</id>", "", "object #0: missing field <id>"),
        ("<area>4", "<area>four", "object #0 (id=5): field <area> is not a number: 'four'"),
        ('"12105"}</segmentation><area>', '"12104"}</segmentation><area>',
         "object #0 (id=5): field <segmentation>: RLE counts cover 11 pixels but size [3, 4] has "
         "12"),
        (">the ship<", "> <", "object #0 (id=5) expression #0: expression text is empty"),
        ("<x>1", "<x>one", "group #0 (id=7): field <x> is not a number: 'one'"),
        (">group<", ">blob<", "group #0 (id=7): group target_type must be one of ('group', "
         "'semantic'), got 'blob'"),
        ("<size>1", "<size>one", "group #0 (id=7): field <size> is not a number: 'one'"),
        ("<id>7</id>", "", "group #0: missing field <id>"),
        ("<category>ship</category>", "", "group #0 (id=7): missing field <category>"),
        ("<direction>left</direction>", "", "group relationship #0: missing field <direction>"),
        ("<source_id>7</source_id>", "", "group relationship #0: missing field <source_id>"),
        ("<target_id>7</target_id>", "", "group relationship #0: missing field <target_id>"),
        ("<height>3</height>", "", "annotation size: missing field <height>"),
        ("<y>2</y>", "", "group #0 (id=7): missing field <y>"),
        (f"<size>1</size><centroid><x>1</x><y>2</y></centroid><segmentation>{SMALL_RLE}"
         "</segmentation>", "<size>1</size><centroid><x>1</x><y>2</y></centroid>",
         "group #0 (id=7): missing field <segmentation>"),
        ("<category>ship</category>", "<category> </category>", "group #0 (id=7): missing field "
         "<category>"),  # blank is missing
        ('<expression id="0">the ship</expression>', '<expression id="0"/>', "object #0 (id=5) "
         "expression #0: expression text is empty"),
        ('id="0">the ships', 'type="other">the ships', "group #0 (id=7) expression #0: "
         "expression type must be one of ('enhanced', 'unique'), got 'other'"),
    ],
)  # fmt: skip
def test_reader_errors_are_exact(tmp_path, old, new, message):
    assert old in SMALL_XML
    path = tmp_path / "P1.xml"
    path.write_text(SMALL_XML.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(AerialDFormatError) as error:
        read_patch_xml(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_domains_group_types_and_expression_messages():
    names = ["P0001_patch_0.png", "L1.png", "D7.png", "x/P2.png", "S9.png", "p1.png"]
    assert [domain_from_filename(n) for n in names] == [
        "isaid", "loveda", "deepglobe", "isaid", "unknown", "unknown",
    ]  # fmt: skip
    ids = ["999999", "1000000", "1999999", "2000000", "cluster-3"]
    assert [group_target_type_from_id(i) for i in ids] == [
        "group", "semantic", "semantic", "group", "group",
    ]  # fmt: skip
    assert AerialGroup(id=1000001, category="x", mask=RLEMask((1, 1), "1")).target_type == (
        "semantic"
    )
    cases = [
        (dict(), "an expression needs an id (rule-based) or a type (enhanced/unique)"),
        (dict(id="0", type="unique"), "an expression has either an id (rule-based) or a type "
         "(LLM), not both"),
        (dict(type="paraphrase"), "expression type must be one of ('enhanced', 'unique'), got "
         "'paraphrase'"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            Expression("a ship", **kwargs)
        assert str(error.value) == message
    assert Expression("a ship", type="enhanced", source_id=4).source_id == "4"


def test_stale_temp_files_of_names_with_glob_characters(tmp_path):
    path = tmp_path / "P[1]_patch.xml"
    stale = tmp_path / ".P[1]_patch.xml.x1y2z.tmp"
    stale.write_text("half written")
    decoy = tmp_path / ".P1_patch.xml.x1y2z.tmp"  # what the unescaped pattern [1] would match
    decoy.write_text("x")
    assert remove_stale_temp_files(path) == [stale]
    assert decoy.exists()
