"""Benchmark of the datagen chain on iSAID-size synthetic images.

Inputs: 4000x4000 px images with 500 polygon instances each (parking-lot rows and scattered
objects) from :func:`datagen.synthetic.draw_isaid_scene`, written in the real iSAID layout.

Measured (wall and CPU seconds, one process pinned to one thread):

0. **the headline**: what a user waits for, per image: the real ``isaid`` -> ``rules`` ->
   ``expressions`` stages (patches -> rules -> expressions -> uniqueness filter) with one worker,
   file I/O and bookkeeping included (source decode, patch PNG and JSON writes and reads, the
   journal, input identities), beside the compute-only figure (1.) and the export that follows
   (XML + released PNGs); compared with the earlier implementation's 8.8 s per image (stages
   1, 4, 5, 6 on the same input, one idle core);
1. one core, per image, compute only (the image already decoded): patches (index + polygon
   rasterisation at patch size), rules, candidate generation, uniqueness filter, text;
2. the filter's throughput (candidates/s) inside the chain, and on one dense table;
3. the real stage work units with their file I/O (PNG decode/encode, JSON), per image;
4. peak resident memory of that one-core process (the work of one worker);
5. split-size independence: the same images in a split of 2 images and in one of 40 images
   (20,000 annotations), selected with ``image_id_range``: per-image time must not grow;
6. the isaid -> rules -> expressions stages with 1 and 2 workers (speed-up).

7. the patch encoding: CPU time to write and read a 480 px patch and its size, for the PNG
   settings worth considering (and BMP), on the benchmark's own patches.

Usage: ``python benchmarks/datagen_bench.py [--images 4] [--parts headline,core,encoding]``
(``--parts`` also takes ``split`` and ``parallel``; ``--images 1 --size 1500`` is a quick check).
It prints Markdown tables; ``--json PATH`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from aerialformats.atomic import png_params
from datagen.config import ISAIDConfig, RulesConfig, config_from_dict
from datagen.expressions import filter_candidates, patch_candidates, write_expressions
from datagen.isaid_patches import extract_patches, parse_annotations
from datagen.rules import derive_rules
from datagen.storage import atomic_write_json, atomic_write_png, read_rgb, stable_seed
from datagen.synthetic import CLASSES, draw_isaid_scene, isaid_image_path, isaid_json_path
from datagen.uniqueness import CandidateTable, TargetTable, count_matches, slot_bits

# The earlier public implementation's stages 1, 4, 5, 6 with file I/O, per 4000^2 image with
# 500 instances, one idle core (issue 13): the figure the headline is compared with.
EARLIER_SECONDS_PER_IMAGE = 8.8
TARGET_SECONDS_PER_IMAGE = 0.9


class Clock:
    """Accumulates wall and CPU seconds per named step."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str):
        clock = self

        class _Step:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                clock.wall[name] = clock.wall.get(name, 0.0) + time.perf_counter() - self.wall
                clock.cpu[name] = clock.cpu.get(name, 0.0) + time.process_time() - self.cpu

        return _Step()


def write_sources(root: Path, count: int, size: int, instances: int, copies: int = 1) -> None:
    """``count`` images in the iSAID layout; the JSON lists them ``copies`` times (extra image
    ids without files, to grow the split without more pixels)."""
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng(stable_seed("bench", index))
        pixels, anns = draw_isaid_scene(size, size, instances, 0.6, rng)
        name = f"P{index:04d}.png"
        atomic_write_png(isaid_image_path(root, "train", name), pixels)
        for copy in range(copies):
            image_id = copy * 1000 + index
            file_name = name if copy == 0 else f"P{image_id:04d}.png"
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    categories = [{"id": c.id, "name": c.raw} for c in CLASSES if c.source == "isaid"]
    atomic_write_json(
        isaid_json_path(root, "train"),
        {"images": images, "annotations": annotations, "categories": categories},
    )


# --------------------------------------------------------------------------------------------------
# 1-4: one core


def one_core(root: str, count: int) -> dict:
    """Runs in a fresh process: per-image chain timings and the filter throughput."""
    import cv2

    cv2.setNumThreads(1)
    root = Path(root)
    data = json.loads(isaid_json_path(root, "train").read_text())
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    clock = Clock()
    counts = {"patches": 0, "candidates": 0, "unique": 0, "expressions": 0, "instances": 0}
    tables = []
    for image in data["images"][:count]:
        with clock("decode"):
            pixels = read_rgb(isaid_image_path(root, "train", image["file_name"]))
        with clock("patches"):
            anns, _, _ = parse_annotations(by_image[image["id"]], image["width"], image["height"])
            patches, _ = extract_patches(pixels, anns, ISAIDConfig(), "P", "train", "P.png")
        for patch, patch_pixels in patches:
            with clock("rules"):
                patch_rules = derive_rules(patch, patch_pixels, RulesConfig())
            with clock("candidates"):
                cands = patch_candidates(patch_rules)
            with clock("filter"):
                kept = filter_candidates(cands)
            with clock("text"):
                record = write_expressions(patch_rules, cands, kept, 10, 0)
            tables.append(cands)
            counts["patches"] += 1
            counts["instances"] += len(patch.instances)
            counts["candidates"] += len(cands)
            counts["unique"] += record["counts"]["unique"]
            counts["expressions"] += record["counts"]["written"]
    # Filter alone, again, over every patch's tables (in-chain throughput).
    start = time.process_time()
    for cands in tables:
        filter_candidates(cands)
    filter_only = time.process_time() - start
    return {"wall": clock.wall, "cpu": clock.cpu, "counts": counts, "filter_only": filter_only}


def worker_units(root: str, count: int, out: str) -> dict:
    """Runs in a fresh process: what a worker does per image (the stage units, file I/O
    included); returns their times and the process's peak resident memory."""
    import cv2

    from datagen import expressions, isaid_patches, rules

    cv2.setNumThreads(1)
    root, out = Path(root), Path(out)
    data = json.loads(isaid_json_path(root, "train").read_text())
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    del data["annotations"]
    clock = Clock()
    cfg = ISAIDConfig()
    for image in data["images"][:count]:
        payload = dict(
            cfg=cfg, work_dir=str(out), split="train", file_name=image["file_name"],
            stem=Path(image["file_name"]).stem,
            image_path=str(isaid_image_path(root, "train", image["file_name"])),
            width=image["width"], height=image["height"], annotations=by_image[image["id"]],
        )  # fmt: skip
        with clock("unit_isaid"):
            result = isaid_patches._image_unit(payload)
        for name in result["patches"]:
            unit = dict(work_dir=str(out), source="isaid", split="train", name=name)
            with clock("unit_rules"):
                rules._patch_unit({**unit, "cfg": RulesConfig()})
            with clock("unit_expressions"):
                expressions._patch_unit({**unit, "max_per_target": 10, "seed": 0})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": clock.wall, "cpu": clock.cpu, "peak_mb": peak_mb}


def dense_filter_rate(candidates: int = 1_000_000, targets: int = 64) -> float:
    """Candidates/s on one table: 64 targets of one category, 1M candidates (30 % relational)."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, targets, candidates)
    cell = np.where(rng.random(candidates) < 0.5, rng.integers(0, 9, candidates), -1)
    required = slot_bits("cell", cell)
    bits = rng.integers(0, 1 << 25, targets).astype(np.uint64)
    np.bitwise_or.at(bits, target, required)  # every candidate fits its own target
    relations = rng.random((targets, 48)) < 0.2
    relation = np.where(rng.random(candidates) < 0.3, rng.integers(0, 48, candidates), -1)
    named = relation >= 0
    relations[target[named], relation[named]] = True
    table = TargetTable(np.zeros(targets, dtype=np.int64), bits, relations)
    start = time.process_time()
    count_matches(table, CandidateTable(target, required, relation))
    return candidates / (time.process_time() - start)


# --------------------------------------------------------------------------------------------------
# 5-6: stages


def headline(root: str, work: str) -> dict:
    """Runs in a fresh process (one thread): the real stages, one worker, with their file I/O.

    Returns wall and CPU seconds per stage for ``isaid``, ``rules``, ``expressions`` (the chain)
    and ``export`` (XML with the released PNGs; not part of the chain).
    """
    import cv2

    from datagen.export import run_export

    cv2.setNumThreads(1)
    times = run_stages(Path(root), Path(work), 1, cpu=True)
    cfg = config_from_dict(
        {
            "work_dir": work, "progress": False, "isaid": {"root": root, "splits": ["train"]},
            "loveda": {"enabled": False}, "historic": {"enabled": False},
            "export": {"formats": ["xml"]},
        }
    )  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    run_export(cfg)
    times["export"] = time.perf_counter() - wall
    times["export_cpu"] = time.process_time() - cpu
    return times


def encoding(root: str, patches: int = 40) -> list[dict]:
    """CPU ms to encode and decode a 480 px patch, and its size, per candidate setting."""
    import cv2

    cv2.setNumThreads(1)
    image = cv2.imread(str(isaid_image_path(Path(root), "train", "P0000.png")))
    height, width = image.shape[:2]
    crops = [
        np.ascontiguousarray(image[y : y + 480, x : x + 480])
        for y in range(0, height - 479, 384)
        for x in range(0, width - 479, 384)
    ][:patches]
    png, flag = cv2.IMWRITE_PNG_COMPRESSION, cv2.IMWRITE_PNG_FILTER
    settings = {
        "PNG level 0, no filter (chain default)": (".png", png_params(0)),
        "PNG level 1, Up filter (release default)": (".png", png_params(1)),
        "PNG OpenCV default (level 1, RLE strategy, Sub filter)": (".png", []),
        "PNG level 1 only (zlib default strategy, adaptive filter)": (".png", [png, 1]),
        "PNG level 1, no filter": (".png", [png, 1, flag, cv2.IMWRITE_PNG_FILTER_NONE]),
        "PNG level 0 only (adaptive filter)": (".png", [png, 0]),
        "PNG level 3, Up filter": (".png", png_params(3)),
        "PNG level 6 (zlib default)": (".png", [png, 6]),
        "BMP (uncompressed)": (".bmp", []),
    }
    rows = []
    for label, (ext, params) in settings.items():
        encode = decode = float("inf")
        for _ in range(3):  # best of three: the least disturbed by other processes
            start = time.process_time()
            encoded = [cv2.imencode(ext, crop, params)[1] for crop in crops]
            encode = min(encode, (time.process_time() - start) / len(crops))
            start = time.process_time()
            for data in encoded:
                cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            decode = min(decode, (time.process_time() - start) / len(crops))
        size = float(np.mean([data.size for data in encoded]))
        rows.append({"setting": label, "encode_ms": encode * 1e3, "decode_ms": decode * 1e3,
                     "kib": size / 1024})  # fmt: skip
    return rows


def run_stages(root: Path, work: Path, workers: int, image_range=None, cpu: bool = False) -> dict:
    """The isaid, rules and expressions stages; wall seconds per stage (and CPU with ``cpu``:
    this process only, so meaningful for one worker)."""
    from datagen.expressions import run_expressions
    from datagen.isaid_patches import extract_isaid_patches
    from datagen.rules import run_rules

    cfg = config_from_dict(
        {
            "work_dir": str(work),
            "workers": workers,
            "progress": False,
            "isaid": {"root": str(root), "splits": ["train"], "image_id_range": image_range},
            "loveda": {"enabled": False},
        }
    )
    times = {}
    for name, stage in (("isaid", extract_isaid_patches), ("rules", run_rules),
                        ("expressions", run_expressions)):  # fmt: skip
        start, start_cpu = time.perf_counter(), time.process_time()
        report = stage(cfg)
        times[name] = time.perf_counter() - start
        if cpu:
            times[f"{name}_cpu"] = time.process_time() - start_cpu
        times[f"{name}_units"] = report["units"]
        times[f"{name}_counts"] = report["counts"]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images for the one-core figures")
    parser.add_argument("--parallel-images", type=int, default=8)
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--parts", default="headline,core,encoding",
        help="comma list of headline (0), core (1-4), split (5), parallel (6), encoding (7)",
    )  # fmt: skip
    args = parser.parse_args()

    parts = set(args.parts.split(","))
    # One thread everywhere (the spawned processes inherit this): the figures are per core.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    temp = Path(tempfile.mkdtemp(prefix="datagen_bench_"))
    figures: dict = {"load_before": os.getloadavg()}
    try:
        if parts & {"headline", "core", "encoding"}:
            write_sources(temp / "src", args.images, args.size, args.instances)
        spawn = mp.get_context("spawn")
        if "headline" in parts:
            with spawn.Pool(1, maxtasksperchild=1) as pool:
                figures["headline"] = pool.apply(
                    headline, (str(temp / "src"), str(temp / "headline"))
                )
        if "encoding" in parts:
            with spawn.Pool(1, maxtasksperchild=1) as pool:
                figures["encoding"] = pool.apply(encoding, (str(temp / "src"),))
        if "core" in parts:
            with spawn.Pool(1, maxtasksperchild=1) as pool:
                figures["one_core"] = pool.apply(one_core, (str(temp / "src"), args.images))
            with spawn.Pool(1, maxtasksperchild=1) as pool:
                figures["worker"] = pool.apply(
                    worker_units, (str(temp / "src"), args.images, str(temp / "units"))
                )
            figures["dense_filter_rate"] = dense_filter_rate()
        if "split" in parts:
            write_sources(temp / "split_small", 2, args.size, args.instances, copies=1)
            write_sources(temp / "split_big", 2, args.size, args.instances, copies=20)
            figures["split_2_images"] = run_stages(temp / "split_small", temp / "w_small", 1)
            figures["split_40_images"] = run_stages(temp / "split_big", temp / "w_big", 1, [0, 1])
        if "parallel" in parts:
            sub = temp / "par"
            write_sources(sub, args.parallel_images, args.size, args.instances)
            figures["load_before_parallel"] = os.getloadavg()
            figures["workers_1"] = run_stages(sub, temp / "p1", 1)
            figures[f"workers_{args.workers}"] = run_stages(sub, temp / "p2", args.workers)
        figures["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    report(figures, args, parts)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def report(fig: dict, args, parts: set[str]) -> None:
    n = args.images
    print(f"# datagen benchmark: {args.size}x{args.size} px, {args.instances} instances/image\n")
    print(f"load average (1, 5, 15 min) before: {fig['load_before']}, after: {fig['load_after']}")
    if "headline" in parts:
        head = fig["headline"]
        stages = ("isaid", "rules", "expressions")
        print("\n| per 4000² image, one worker, file I/O included | wall s | CPU s |")
        print("|---|---|---|")
        for stage in stages:
            print(f"| stage `{stage}` | {head[stage] / n:.3f} | {head[stage + '_cpu'] / n:.3f} |")
        wall = sum(head[s] for s in stages) / n
        cpu = sum(head[s + "_cpu"] for s in stages) / n
        print(f"| **whole chain (patches -> rules -> expressions -> filter)** | **{wall:.3f}** "
              f"| **{cpu:.3f}** |")  # fmt: skip
        print(f"| export that follows (XML + released PNG level 1) | {head['export'] / n:.3f} "
              f"| {head['export_cpu'] / n:.3f} |")  # fmt: skip
        counts = head["isaid_counts"]
        print(
            f"\n- headline: {wall:.3f} s per image wall ({cpu:.3f} s CPU): "
            f"{EARLIER_SECONDS_PER_IMAGE / wall:.1f}x the earlier implementation's "
            f"{EARLIER_SECONDS_PER_IMAGE} s (target <= {TARGET_SECONDS_PER_IMAGE} s, i.e. >= 10x)"
        )
        print(f"- per image: {counts.get('patches', 0) / n:.0f} patches, "
              f"{counts.get('instances', 0) / n:.0f} instance crops")  # fmt: skip
    if "encoding" in parts:
        print("\n| patch encoding (480 px patch, CPU) | write ms | read ms | KiB |")
        print("|---|---|---|---|")
        for row in fig["encoding"]:
            print(f"| {row['setting']} | {row['encode_ms']:.2f} | {row['decode_ms']:.2f} "
                  f"| {row['kib']:.0f} |")  # fmt: skip
    if "core" in parts:
        core, worker = fig["one_core"], fig["worker"]
        wall, cpu, counts = core["wall"], core["cpu"], core["counts"]
        chain_steps = ("patches", "rules", "candidates", "filter", "text")
        print("\n| step (one core, per image) | wall s | CPU s |")
        print("|---|---|---|")
        for step in ("decode", *chain_steps):
            print(f"| {step} | {wall[step] / n:.3f} | {cpu[step] / n:.3f} |")
        chain_wall = sum(wall[s] for s in chain_steps) / n
        chain_cpu = sum(cpu[s] for s in chain_steps) / n
        print(f"| **chain patches..text** | **{chain_wall:.3f}** | **{chain_cpu:.3f}** |")
        for step in ("unit_isaid", "unit_rules", "unit_expressions"):
            print(
                f"| stage unit {step[5:]} with file I/O | {worker['wall'][step] / n:.3f} | "
                f"{worker['cpu'][step] / n:.3f} |"
            )
        print()
        print(
            f"- per image: {counts['patches'] / n:.0f} patches, {counts['instances'] / n:.0f} "
            f"instance crops, {counts['candidates'] / n:.0f} candidates, "
            f"{counts['unique'] / n:.0f} unique, {counts['expressions'] / n:.0f} written "
            "(cap 10/target)"
        )
        chain_total = sum(wall[s] for s in chain_steps)
        print(
            f"- chain throughput: {counts['patches'] / chain_total:.0f} patches/s, "
            f"{counts['expressions'] / chain_total:.0f} expressions/s (wall)"
        )
        print(
            f"- filter in the chain: {counts['candidates'] / wall['filter']:,.0f} candidates/s "
            f"wall, {counts['candidates'] / cpu['filter']:,.0f}/s CPU (re-run alone: "
            f"{counts['candidates'] / core['filter_only']:,.0f}/s CPU); one dense table: "
            f"{fig['dense_filter_rate']:,.0f}/s"
        )
        print(f"- peak memory of a process doing a worker's units: {worker['peak_mb']:.0f} MB")
    if "split" in parts:
        small, big = fig["split_2_images"], fig["split_40_images"]
        print(
            f"- split of 2 images vs 40 images (the same 2 processed): isaid stage "
            f"{small['isaid']:.2f} s vs {big['isaid']:.2f} s ({big['isaid'] / small['isaid']:.2f}x)"
        )
    if "parallel" in parts:
        one, many = fig["workers_1"], fig[f"workers_{args.workers}"]
        print(f"\nload average before the parallel runs: {fig['load_before_parallel']}\n")
        print(
            f"| stage ({args.parallel_images} images) | 1 worker s | {args.workers} workers s "
            "| speed-up |"
        )
        print("|---|---|---|---|")
        stages = ("isaid", "rules", "expressions")
        for stage in stages:
            print(
                f"| {stage} ({one[f'{stage}_units']} units) | {one[stage]:.2f} | "
                f"{many[stage]:.2f} | {one[stage] / many[stage]:.2f}x |"
            )
        total1, total2 = sum(one[s] for s in stages), sum(many[s] for s in stages)
        print(f"| all three | {total1:.2f} | {total2:.2f} | {total1 / total2:.2f}x |")


if __name__ == "__main__":
    main()
