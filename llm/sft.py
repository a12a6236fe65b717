"""``llm build-sft``: the distillation set from validated teacher answers.

Only ``ok`` ledger records enter the set (failures never become empty training targets), and only
those made with the current prompt version and the current originals of the target. For each one
the two images are rendered again with :func:`llm.render.render_enhance_target` (byte-identical to
what the teacher got) and saved under ``images/``; the conversation is built with
:func:`llm.prompt.hf_messages`, the same builder and layout as inference, and the assistant turn is
the canonical answer JSON. Patches (not targets) are split into train and eval, so no eval image
is seen in training. Output::

    <out>/train.jsonl, eval.jsonl   {"id", "patch", "teacher", "prompt_version", "messages"} lines
    <out>/images/<digest>-{1,2}.<png|jpg>
    <out>/manifest.json             counts, split, prompt version, render and validation settings,
                                    sha256 of both JSONL files
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aerialformats.atomic import atomic_write_bytes, atomic_write_text
from llm.config import EnhanceConfig
from llm.ledger import Ledger
from llm.prompt import build_prompt, hf_messages, prompt_version
from llm.render import render_enhance_target
from llm.targets import AnnotationFile, targets_of_patch


def split_patches(patches: list[str], eval_fraction: float, seed: int) -> set[str]:
    """The eval patches: a seeded ``eval_fraction`` of them (at least one when there are two)."""
    ordered = sorted(patches)
    random.Random(seed).shuffle(ordered)
    count = round(len(ordered) * eval_fraction)
    if eval_fraction > 0 and len(ordered) >= 2:
        count = min(max(count, 1), len(ordered) - 1)
    return set(ordered[:count])


def build_sft_set(
    config: EnhanceConfig,
    files: list[AnnotationFile],
    work_dir: str | Path,
    out_dir: str | Path,
    eval_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the SFT set; returns the manifest."""
    out_dir = Path(out_dir)
    ledger_path = Path(work_dir) / "ledger.jsonl"
    if not ledger_path.is_file():
        raise FileNotFoundError(
            f"{ledger_path}: no ledger; run `llm enhance` with the teacher first"
        )
    records = {uid: r for uid, r in Ledger(ledger_path).latest().items() if r["status"] == "ok"}
    version = prompt_version(config)
    skipped: Counter = Counter()
    examples: dict[str, list[dict]] = defaultdict(list)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    wanted = {record["annotation"] for record in records.values()}
    for file in tqdm(files, desc="llm build-sft", unit="file"):
        if file.rel not in wanted:
            continue
        for target, _ in targets_of_patch(file.read(), file):
            record = records.get(target.uid)
            if record is None:
                continue
            if record["prompt_version"] != version:
                skipped["other_prompt_version"] += 1
                continue
            if record["originals"] != [[o.id, o.text] for o in target.originals]:
                skipped["originals_changed"] += 1
                continue
            images = render_enhance_target(target, config.render)
            suffix = "png" if images.mime == "image/png" else "jpg"
            paths = []
            for index, data in ((1, images.first_bytes), (2, images.second_bytes)):
                path = images_dir / f"{images.digest[:24]}-{index}.{suffix}"
                if not path.is_file():
                    atomic_write_bytes(path, data)
                paths.append(path.relative_to(out_dir).as_posix())
            prompt = build_prompt(target, images.mode, config)
            answer = json.dumps(record["result"], ensure_ascii=False)
            examples[target.annotation].append(
                {
                    "id": target.uid,
                    "patch": target.annotation,
                    "teacher": record.get("served_model") or record["model"],
                    "prompt_version": version,
                    "messages": hf_messages(prompt, paths[0], paths[1], answer),
                }
            )
    missing = len(records) - sum(len(v) for v in examples.values()) - sum(skipped.values())
    if missing:
        skipped["annotation_not_found"] += missing
    eval_patches = split_patches(list(examples), eval_fraction, seed)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    for patch in sorted(examples):
        splits["eval" if patch in eval_patches else "train"].extend(examples[patch])
    manifest: dict[str, Any] = {
        "prompt_version": version,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "counts": {name: len(rows) for name, rows in splits.items()},
        "patches": {"train": len(examples) - len(eval_patches), "eval": len(eval_patches)},
        "skipped": dict(skipped),
        "render": config.render.model_dump(mode="json"),
        "validation": config.validation.model_dump(mode="json"),
        "source_ledger": str(ledger_path),
        "sha256": {},
    }
    for name, rows in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        atomic_write_text(out_dir / f"{name}.jsonl", text)
        manifest["sha256"][name] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest
