"""Enhancement targets read from Aerial-D patch annotations.

A target is one ``<object>`` or one ``<group>`` that has at least one rule-based expression. Only
rule-based expressions (those with an ``id``) are originals: LLM expressions written by an earlier
run are never fed back as input.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aerialformats.aerial_d import (
    AerialGroup,
    AerialObject,
    PatchAnnotation,
    RLEMask,
    read_patch_xml,
)

TargetKind = Literal["instance", "group", "semantic"]


@dataclass(frozen=True)
class OriginalExpression:
    """A rule-based expression: ``id`` is its XML ``id`` attribute."""

    id: str
    text: str


@dataclass(frozen=True)
class EnhanceTarget:
    """One request's worth of data.

    ``uid`` is ``<annotation path relative to the root, no suffix>#<object|group>/<id>``, unique in
    a dataset and stable across runs. ``bbox`` is ``(xmin, ymin, xmax, ymax)`` (max exclusive) for
    instances and ``None`` for groups, whose geometry is the ``mask``.
    """

    uid: str
    annotation: str
    image_path: Path
    entity: Literal["object", "group"]
    entity_id: str
    kind: TargetKind
    category: str
    domain: str
    mask: RLEMask
    bbox: tuple[int, int, int, int] | None
    originals: tuple[OriginalExpression, ...]

    @property
    def category_text(self) -> str:
        """The category as words (``Large_Vehicle`` → ``large vehicle``)."""
        return " ".join(self.category.replace("_", " ").replace("-", " ").lower().split())


@dataclass(frozen=True)
class AnnotationFile:
    """One patch annotation: where it is read from, written to, and its image folder."""

    source: Path
    output: Path
    rel: str
    images_dir: Path | None = None

    def read(self) -> PatchAnnotation:
        """The current state: the output file when a run already wrote it, else the source."""
        return read_patch_xml(self.output if self.output.is_file() else self.source)

    def image_path(self, annotation: PatchAnnotation) -> Path:
        """``<split>/images/<filename>`` next to ``<split>/annotations/`` unless overridden."""
        folder = self.images_dir or self.source.parent.parent / "images"
        return folder / annotation.filename


def discover_annotations(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
) -> list[AnnotationFile]:
    """All ``*.xml`` files under ``root`` (sorted); ``out`` mirrors them (default: in place)."""
    root = Path(root)
    if root.is_file():
        paths, base = [root], root.parent
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*.xml") if not p.name.startswith("."))
        base = root
    else:
        raise FileNotFoundError(f"{root}: annotation folder not found")
    if not paths:
        raise FileNotFoundError(f"{root}: no *.xml annotation files")
    out_root = Path(out) if out is not None else base
    images = Path(images_dir) if images_dir is not None else None
    files = []
    for path in paths:
        rel = path.relative_to(base)
        files.append(AnnotationFile(path, out_root / rel, rel.with_suffix("").as_posix(), images))
    return files


def _originals(entity: AerialObject | AerialGroup) -> tuple[OriginalExpression, ...]:
    return tuple(
        OriginalExpression(id=e.id, text=e.text)
        for e in entity.expressions
        if e.type is None and e.id is not None
    )


def has_llm_expressions(entity: AerialObject | AerialGroup) -> bool:
    return any(e.type is not None for e in entity.expressions)


def targets_of_patch(
    annotation: PatchAnnotation, file: AnnotationFile
) -> Iterator[tuple[EnhanceTarget, AerialObject | AerialGroup]]:
    """Targets (and the entity each came from) of one patch, objects first, in file order."""
    image_path = file.image_path(annotation)
    domain = annotation.domain
    for obj in annotation.objects:
        originals = _originals(obj)
        if originals:
            target = EnhanceTarget(
                uid=f"{file.rel}#object/{obj.id}",
                annotation=file.rel,
                image_path=image_path,
                entity="object",
                entity_id=obj.id,
                kind="instance",
                category=obj.category,
                domain=domain,
                mask=obj.mask,
                bbox=tuple(int(v) for v in obj.bbox),  # type: ignore[arg-type]
                originals=originals,
            )
            yield target, obj
    for group in annotation.groups:
        originals = _originals(group)
        if originals:
            target = EnhanceTarget(
                uid=f"{file.rel}#group/{group.id}",
                annotation=file.rel,
                image_path=image_path,
                entity="group",
                entity_id=group.id,
                kind="semantic" if group.target_type == "semantic" else "group",
                category=group.category,
                domain=domain,
                mask=group.mask,
                bbox=None,
                originals=originals,
            )
            yield target, group


def find_entity(annotation: PatchAnnotation, target: EnhanceTarget) -> AerialObject | AerialGroup:
    entities = annotation.objects if target.entity == "object" else annotation.groups
    for entity in entities:
        if entity.id == target.entity_id:
            return entity
    raise KeyError(f"{target.annotation}: {target.entity} id={target.entity_id} not found")


def stratified_sample(targets: Iterable[EnhanceTarget], n: int, seed: int) -> list[EnhanceTarget]:
    """``n`` targets spread evenly over (domain, kind, category) strata, deterministic in ``seed``.

    Strata are visited round-robin in a seeded order and each is shuffled, so rare categories and
    target kinds get represented instead of following the dataset's proportions.
    """
    rng = random.Random(seed)
    strata: dict[tuple[str, str, str], list[EnhanceTarget]] = defaultdict(list)
    for target in sorted(targets, key=lambda t: t.uid):
        strata[(target.domain, target.kind, target.category_text)].append(target)
    keys = sorted(strata)
    rng.shuffle(keys)
    for key in keys:
        rng.shuffle(strata[key])
    chosen: list[EnhanceTarget] = []
    while len(chosen) < n and any(strata[k] for k in keys):
        for key in keys:
            if strata[key] and len(chosen) < n:
                chosen.append(strata[key].pop())
    return sorted(chosen, key=lambda t: t.uid)
