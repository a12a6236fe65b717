"""Stage ``export``: the release formats, written from the expression records.

Under ``<work_dir>/export/``:

- ``aeriald/{train,val}/{images/<name>.png, annotations/<name>.xml}``: the zip-release layout,
  XML written by :func:`aerialformats.aerial_d.write_patch_xml` (the one writer the
  Aerial-D loader's reader matches); only patches and targets that kept expressions;
- ``hf/data/{train,validation}-00000-of-00001.parquet``: one row per (target, expression) with the
  released Hugging Face fields (``image`` embedded, ``rle_mask``, ...) plus ``target_type``,
  loadable with ``datasets.load_dataset('parquet', ...)``; identical image bytes are stored once
  per row group by Parquet dictionary encoding;
- ``refcoco/instances.json`` + ``refcoco/refs(unc).p``: COCO instances (RLE masks) and
  REFER-style refs with ids unique over the whole export (the original restarted them per file);
- ``statistics.md`` / ``statistics.json``.

Group categories use the same display names as objects (one class table).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from aerialformats.aerial_d import (
    AerialGroup,
    AerialObject,
    Expression,
    GroupRelationship,
    PatchAnnotation,
    RLEMask,
    write_patch_xml,
)
from aerialformats.atomic import encode_png
from datagen.classes import CLASSES, class_by_key
from datagen.config import PipelineConfig, fingerprint
from datagen.dataset_stats import collect_statistics, statistics_markdown
from datagen.expressions import expressions_dir
from datagen.historic import historic_choice, historic_dir
from datagen.isaid_patches import patch_dir
from datagen.rules import GRID_PHRASES, patch_units, upstream_fingerprint
from datagen.stage_state import (
    INPUTS_KEY,
    StageState,
    complete_stage,
    require_complete,
    run_units,
    unit_inputs,
)
from datagen.storage import atomic_copy, atomic_write_bytes, atomic_write_json, read_json, read_rgb

__all__ = [
    "HF_SPLITS",
    "build_annotation",
    "hf_features",
    "parquet_rows",
    "refcoco_files",
    "run_export",
]

HF_SPLITS = {"train": "train", "val": "validation"}
DOMAIN_IDS = {"isaid": 0, "loveda": 1}


def export_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "export"


def _expression_objects(target: dict):
    return [Expression(text=e["text"], id=e["id"]) for e in target["expressions"]]


def build_annotation(record: dict, filename: str):
    """The :class:`~aerialformats.aerial_d.PatchAnnotation` of an expression record."""
    annotation = PatchAnnotation(filename=filename, width=record["width"], height=record["height"])
    for target in record["targets"]:
        mask = RLEMask(size=tuple(target["rle"]["size"]), counts=target["rle"]["counts"])
        name = class_by_key(target["category"]).name
        if target["kind"] == "instance":
            attributes = {}
            if target["color"] is None:
                attributes["possible_colors"] = ",".join(target["colors"])
            annotation.objects.append(
                AerialObject(
                    id=target["id"],
                    category=name,
                    bbox=tuple(target["bbox"]),
                    mask=mask,
                    expressions=_expression_objects(target),
                    area=target["area"],
                    attributes=attributes,
                )
            )
        else:
            attributes = {"kind": target["kind"]}
            if target["cell"] >= 0:
                attributes["grid_position"] = GRID_PHRASES[target["cell"]]
            annotation.groups.append(
                AerialGroup(
                    id=target["id"],
                    category=name,
                    mask=mask,
                    size=max(1, len(target["member_ids"])) if target["kind"] != "region" else 1,
                    instance_ids=list(target["member_ids"]),
                    centroid=tuple(target["centroid"]),
                    expressions=_expression_objects(target),
                    target_type="semantic" if target["kind"] in ("class", "region") else "group",
                    attributes=attributes,
                )
            )
    annotation.group_relationships = [
        GroupRelationship(r["source_id"], r["target_id"], r["direction"], str(r["distance"]))
        for r in record["group_relations"]
    ]
    return annotation


def _exported_patches(cfg: PipelineConfig) -> list[dict]:
    """One entry per exported patch (historic variants included when configured), sorted.

    Entries name the expression record file; consumers read it when they need it, so the export
    never holds every record in memory at once.
    """
    entries = []
    for key, unit in patch_units(cfg):
        work, split, name = cfg.work_path, unit["split"], unit["name"]
        path = expressions_dir(work, split) / f"{name}.json"
        if not read_json(path)["targets"]:
            continue
        image = patch_dir(work, unit["source"], split) / "images" / f"{name}.png"
        base = {"split": split, "record": str(path), "variant": False}
        entries.append({**base, "key": key, "name": name, "image": str(image)})
        mode = historic_choice(name, cfg.historic, cfg.seed) if cfg.historic.enabled else None
        if cfg.historic.include_in_export and mode is not None:
            variant = f"{name}_{mode}"
            image = historic_dir(work, split) / f"{variant}.png"
            entries.append(
                {**base, "key": f"{split}/{variant}", "name": variant, "image": str(image),
                 "variant": True}
            )  # fmt: skip
    return sorted(entries, key=lambda e: e["key"])


def _records(entries: list[dict]):
    """``(entry, record)`` pairs, reading one record at a time."""
    for entry in entries:
        yield entry, read_json(entry["record"])


def released_image(work_dir: Path, split: str, name: str) -> Path:
    return export_dir(work_dir) / "aeriald" / split / "images" / f"{name}.png"


def release_png(image: str | Path, level: int | None) -> bytes:
    """The released PNG bytes of a stage patch: re-encoded at ``level``, or as stored (None)."""
    if level is None:
        return Path(image).read_bytes()
    return encode_png(read_rgb(image), level)


def _xml_unit(payload: dict) -> dict:
    work = Path(payload["work_dir"])
    record, name = read_json(payload["record"]), payload["name"]
    split_dir = export_dir(work) / "aeriald" / record["split"]
    target = released_image(work, record["split"], name)
    if payload["png_compression"] is None:
        image = atomic_copy(payload["image"], target)
    else:
        image = atomic_write_bytes(
            target, release_png(payload["image"], payload["png_compression"]), keep_identical=True
        )
    xml = write_patch_xml(
        build_annotation(record, f"{name}.png"), split_dir / "annotations" / f"{name}.xml"
    )
    return {"outputs": [str(image.relative_to(work)), str(xml.relative_to(work))]}


# --------------------------------------------------------------------------------------------------
# Parquet


def hf_features():
    """The released Hugging Face features (plus ``target_type``)."""
    import datasets

    int32, string = datasets.Value("int32"), datasets.Value("string")
    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_filename": string,
            "xml_filename": string,
            "split": string,
            "domain_name": string,
            "domain_id": int32,
            "image_width": int32,
            "image_height": int32,
            "object_type": string,
            "object_id": string,
            "category": string,
            "bbox": {"xmin": int32, "ymin": int32, "xmax": int32, "ymax": int32},
            "area": int32,
            "possible_colors": datasets.List(string),
            "rle_mask": {"size": datasets.List(int32), "counts": string},
            "expression_id": string,
            "expression_text": string,
            "expression_type": string,
            "group_id": string,
            "group_size": int32,
            "instance_ids": datasets.List(string),
            "centroid": {"x": datasets.Value("float32"), "y": datasets.Value("float32")},
            "grid_position": string,
            "target_type": string,
        }
    )


def parquet_rows(record: dict, name: str, image_bytes: bytes) -> list[dict]:
    """One row per (target, expression) of a patch, in the released field order."""
    rows = []
    for target in record["targets"]:
        individual = target["kind"] == "instance"
        x0, y0, x1, y1 = target["bbox"]
        base = {
            "image": {"bytes": image_bytes, "path": None},
            "image_filename": f"{name}.png",
            "xml_filename": f"{name}.xml",
            "split": record["split"],
            "domain_name": record["source"],
            "domain_id": DOMAIN_IDS[record["source"]],
            "image_width": record["width"],
            "image_height": record["height"],
            "object_type": "individual" if individual else "group",
            "object_id": target["id"] if individual else "",
            "category": class_by_key(target["category"]).name,
            "bbox": {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1},
            "area": target["area"],
            "possible_colors": target["colors"] if individual and target["color"] is None else [],
            "rle_mask": {"size": target["rle"]["size"], "counts": target["rle"]["counts"]},
            "group_id": "" if individual else target["id"],
            "group_size": 1 if individual else max(1, len(target["member_ids"])),
            "instance_ids": [] if individual else list(target["member_ids"]),
            "centroid": {"x": 0.0, "y": 0.0}
            if individual
            else {"x": target["centroid"][0], "y": target["centroid"][1]},
            "grid_position": GRID_PHRASES[target["cell"]] if target["cell"] >= 0 else "",
            "target_type": "instance"
            if individual
            else ("semantic" if target["kind"] in ("class", "region") else "group"),
        }
        for expression in target["expressions"]:
            rows.append(
                {
                    **base,
                    "expression_id": expression["id"],
                    "expression_text": expression["text"],
                    "expression_type": expression.get("type") or "original",
                }
            )
    return rows


def _write_parquet(
    path: Path, entries: list[dict], patches_per_row_group: int, level: int | None, work: Path
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = hf_features().arrow_schema
    buffer = io.BytesIO()
    count = 0
    # Dictionary pages large enough for a row group's images: each image is stored once.
    with pq.ParquetWriter(buffer, schema, dictionary_pagesize_limit=1 << 28) as writer:
        for start in range(0, len(entries), patches_per_row_group):
            rows = []
            for entry, record in _records(entries[start : start + patches_per_row_group]):
                released = released_image(work, entry["split"], entry["name"])
                # The XML export already wrote the released PNG: reuse it, do not encode twice.
                image = (
                    released.read_bytes()
                    if released.is_file()
                    else release_png(entry["image"], level)
                )
                rows += parquet_rows(record, entry["name"], image)
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                count += len(rows)
        if count == 0:
            writer.write_table(schema.empty_table())
    atomic_write_bytes(path, buffer.getvalue())
    return count


# --------------------------------------------------------------------------------------------------
# RefCOCO-style refs + COCO instances


def refcoco_files(entries: list[dict]) -> tuple[dict, list[dict]]:
    """COCO instances (one annotation per target) and REFER refs (one per target); image, ann,
    ref and sentence ids run over the whole export, so they are unique."""
    images, annotations, refs = [], [], []
    sentence_id = 0
    for image_id, (entry, record) in enumerate(_records(entries), start=1):
        file_name = f"{entry['name']}.png"
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": record["width"],
                "height": record["height"],
                "split": record["split"],
                "source": record["source"],
            }
        )
        for target in record["targets"]:
            ann_id = len(annotations) + 1
            x0, y0, x1, y1 = target["bbox"]
            category_id = class_by_key(target["category"]).id
            target_key = f"{'object' if target['kind'] == 'instance' else 'group'}:{target['id']}"
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": target["rle"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": target["area"],
                    "iscrowd": 0,
                    "aerial_d_target": target_key,
                    "member_ids": list(target.get("member_ids", [])),
                }
            )
            sentences = []
            for expression in target["expressions"]:
                sentence_id += 1
                text = expression["text"]
                sentences.append(
                    {"sent_id": sentence_id, "sent": text, "raw": text, "tokens": text.split()}
                )
            refs.append(
                {
                    "ref_id": len(refs) + 1,
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "category_id": category_id,
                    "split": record["split"],
                    "file_name": file_name,
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                }
            )
    categories = [{"id": c.id, "name": c.name, "supercategory": c.source} for c in CLASSES]
    instances = {
        "info": {"description": "Aerial-D rule-based referring expressions (datagen)"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return instances, refs


def write_refcoco(folder: Path, entries: list[dict]) -> None:
    """Write ``instances.json`` and ``refs(unc).p``.

    The refs file is a pickle because the REFER toolkit format (RefCOCO, RRSIS-D, NWPU-Refer)
    is one; it holds only lists, dicts, strings and numbers (protocol 2, readable everywhere).
    """
    instances, refs = refcoco_files(entries)
    atomic_write_json(folder / "instances.json", instances)
    atomic_write_bytes(folder / "refs(unc).p", pickle.dumps(refs, protocol=2))


# --------------------------------------------------------------------------------------------------
# Stage


def run_export(cfg: PipelineConfig, overwrite: bool = False) -> dict:
    """Write every configured export format and the statistics; returns the stage report."""
    require_complete(cfg.work_path, "expressions")
    if cfg.historic.include_in_export:
        require_complete(cfg.work_path, "historic")
    work = cfg.work_path
    entries = _exported_patches(cfg)
    upstream = upstream_fingerprint(work, ["expressions", "historic"])
    state = StageState(
        work,
        "export",
        fingerprint("export", cfg.export, cfg.historic, upstream),
        [export_dir(work)],
    )
    results: dict[str, dict] = {}
    if "xml" in cfg.export.formats:
        units = [
            (
                e["key"],
                {
                    "work_dir": str(work),
                    "png_compression": cfg.export.png_compression,
                    **e,
                    INPUTS_KEY: unit_inputs(produced=[e["record"], e["image"]]),
                },
            )
            for e in entries
        ]
        # Each XML unit is a copy and a small write: workers only pay off for many patches.
        results = run_units(
            state, cfg, units, _xml_unit, desc="export xml", unit="patch", overwrite=overwrite,
            min_units_per_worker=200,
        )  # fmt: skip
    else:
        state.open(overwrite)
    counts = {}
    if "parquet" in cfg.export.formats:
        for split, hf_name in HF_SPLITS.items():
            chosen = [e for e in entries if e["split"] == split]
            if chosen:
                path = export_dir(work) / "hf" / "data" / f"{hf_name}-00000-of-00001.parquet"
                counts[f"parquet_rows_{split}"] = _write_parquet(
                    path, chosen, cfg.export.patches_per_row_group, cfg.export.png_compression,
                    work,
                )  # fmt: skip
    if "refcoco" in cfg.export.formats:
        write_refcoco(export_dir(work) / "refcoco", entries)
    base = [e for e in entries if not e["variant"]]
    stats = collect_statistics(record for _, record in _records(base))
    atomic_write_json(export_dir(work) / "statistics.json", stats, indent=2)
    atomic_write_bytes(
        export_dir(work) / "statistics.md",
        statistics_markdown(stats, len(entries) - len(base)).encode(),
    )
    counts["patches"] = len(entries)
    counts["expressions"] = sum(
        c.get("objects_expressions", 0) + c.get("groups_expressions", 0)
        for c in stats["splits"].values()
    )
    return complete_stage(state, results, {"statistics": stats["splits"], "counts": counts})
