"""ClipSAM speed and memory: training images/s, peak memory, inference ms/image, parameter counts.

    python benchmarks/model_bench.py                 # tiny on CPU; + ClipSAM-b/-l when CUDA is up
    python benchmarks/model_bench.py --models b l --device cuda --batch-sizes 1 2 4 8
    python benchmarks/model_bench.py --models clipsam2-l --device cpu --batch-sizes 1 --iters 1

The tiny model is built from ``configs/clipsam/clipsam-tiny_aerial-d.py`` with checkpoints written
by :mod:`aerialseg.models.tiny`. ClipSAM-b/-l use the real architecture dimensions (SigLIP 2
so400m/14@384 with its 256k vocabulary, SAM ViT-B/ViT-L at 1024) and ClipSAM2-L (the published
RSRefSeg 2 size: SigLIP 2 so400m/16@512, SAM 2.1 Hiera-L at 1024) with random weights, so nothing
is downloaded; only the tokenizer and image statistics come from a small local folder. GPU runs use
bf16 autocast through mmengine's ``AmpOptimWrapper`` (as the configs do); CPU runs use fp32.
Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and the process's peak RSS on CPU.

Side by side with a baseline commit (issue 16), on CPU with fixed threads::

    python benchmarks/model_bench.py --compare [--baseline COMMIT] [--threads 2] [--quick]

checks the baseline out into a temporary ``git worktree`` (removed afterwards) and times, for each
model, precision (fp32, bf16 autocast) and task (one training step = preprocessing + forward +
backward + AdamW; one inference call = ``test_step`` on one image and expression), the baseline
code and the current code in separate subprocesses, alternating which goes first. The harness
(this file) is the same for both; only the ``aerialseg`` package and configs differ. It prints
the seconds of each side, the speed-up (baseline / current) and each side's peak RSS. ``--quick``
keeps the real resolutions and widths but cuts the depths (SAM 4 blocks, SigLIP 3 layers per
tower), to check the script in a few minutes.

    python benchmarks/model_bench.py --feature-cache --threads 1

times training epochs of the tiny config with and without the frozen-tower feature cache, and one
reduced-depth ClipSAM-b step with and without a warm cache.

    python benchmarks/model_bench.py --op-profile bf16-train --quick --threads 1

prints the CPU seconds of each aten operator (and of each operator and input shapes) in one step
of the current code: the thread's CPU clock read around every operator, which a busy machine
disturbs far less than ``torch.profiler``'s wall times.

    python benchmarks/model_bench.py --compile-trial --quick --threads 1

times the current code's inference eagerly and with its three transformer towers (SAM image
encoder, SigLIP vision encoder and text model) under ``torch.compile`` (inductor, plain and with
``freezing``, which pre-packs the frozen weights for oneDNN), each in its own process: the first
call (compilation included) and the steady state.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs/clipsam/clipsam-tiny_aerial-d.py"
CONFIGS = {
    "b": REPO / "configs/clipsam/clipsam-b_joint.py",
    "l": REPO / "configs/clipsam/clipsam-l_joint.py",
    # The SAM 2.1 family at the published RSRefSeg 2 size (SigLIP 2 so400m/16@512 + Hiera-L).
    "clipsam2-l": REPO / "configs/clipsam2/clipsam2-l_rrsisd.py",
}
SO400M_TOWER = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16
)
SIGLIP2_SO400M = dict(
    model_type="siglip",
    text_config=dict(
        SO400M_TOWER, vocab_size=256000, max_position_embeddings=64, bos_token_id=None
    ),
    vision_config=dict(SO400M_TOWER, image_size=384, patch_size=14),
)
SIGLIP2_SO400M_16_512 = dict(
    SIGLIP2_SO400M, vision_config=dict(SO400M_TOWER, image_size=512, patch_size=16)
)
TEXTS = ("the white car in the top left", "all buildings in the image", "the ship near the pier")


def _processing_folder(root: Path, image_size: int) -> str:
    """A folder with only a tokenizer and SigLIP image statistics (no weights)."""
    from transformers import SiglipImageProcessor

    from aerialseg.models.tiny import build_tiny_tokenizer

    folder = root / f"processing-{image_size}"
    build_tiny_tokenizer().save_pretrained(folder)
    SiglipImageProcessor(
        size=dict(height=image_size, width=image_size), image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return str(folder)


def model_config(name: str, root: Path) -> Config:
    if name == "tiny":
        from aerialseg.models.tiny import write_tiny_checkpoints

        paths = write_tiny_checkpoints(root / "tiny")
        cfg = Config.fromfile(str(TINY_CONFIG))
        cfg.model.vlm.pretrained = paths.vlm_path
        cfg.model.sam.checkpoint = paths.sam_path
        return cfg
    cfg = Config.fromfile(str(CONFIGS[name]))
    sam2_family = name.startswith("clipsam2")
    cfg.model.vlm = dict(config=SIGLIP2_SO400M_16_512 if sam2_family else SIGLIP2_SO400M)
    cfg.model.sam.checkpoint = None
    cfg.model.data_preprocessor.vlm_path = _processing_folder(root, 512 if sam2_family else 384)
    return cfg


def make_batch(batch_size: int, size: int, seed: int = 0) -> dict:
    """Images at the model's input size (BGR uint8) with box targets and expressions."""
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for index in range(batch_size):
        image = rng.integers(0, 256, size=(3, size, size), dtype=np.uint8)
        mask = np.zeros((1, size, size), dtype=np.uint8)
        mask[0, size // 4 : size // 2, size // 3 : size // 2] = 1
        sample = SegDataSample(
            metainfo=dict(
                text=TEXTS[index % len(TEXTS)], ori_shape=(size, size), img_shape=(size, size)
            )
        )
        sample.gt_sem_seg = PixelData(data=torch.from_numpy(mask))
        inputs.append(torch.from_numpy(image))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_training(model, device, batch_size, iters, warmup) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    if device.type == "cuda":
        wrapper = AmpOptimWrapper(
            optimizer=optimizer, dtype="bfloat16", clip_grad=dict(max_norm=1.0)
        )
    else:
        wrapper = OptimWrapper(optimizer=optimizer, clip_grad=dict(max_norm=1.0))
    batch = make_batch(batch_size, model.data_preprocessor.size)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(warmup + iters):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        model.train_step(copy.deepcopy(batch), wrapper)
    _sync(device)
    seconds = time.perf_counter() - start
    return dict(images_per_s=batch_size * iters / seconds, peak_mb=_peak_memory_mb(device))


@torch.no_grad()
def bench_inference(model, device, iters, warmup) -> dict:
    """ms per image (one expression) and ms per extra expression on an encoded image."""
    model.eval()
    batch = make_batch(1, model.data_preprocessor.size)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        for step in range(warmup + iters):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            model.test_step(copy.deepcopy(batch))
        _sync(device)
        per_image = (time.perf_counter() - start) / iters * 1000
        data = model.data_preprocessor(copy.deepcopy(batch), False)["inputs"]
        features = model.extract_feat(data)
        texts = list(TEXTS) * 3
        ids, mask = model.data_preprocessor.tokenize(texts)
        index = torch.zeros(len(texts), dtype=torch.long, device=device)
        for step in range(warmup + iters):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            model.decode(features, index, ids, mask)
        _sync(device)
        per_expression = (time.perf_counter() - start) / iters / len(texts) * 1000
    return dict(ms_per_image=per_image, ms_per_extra_expression=per_expression)


def run(name, device, batch_sizes, iters, warmup, root) -> list[dict]:
    cfg = model_config(name, root)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device)
    summary = model.parameter_summary()
    rows = []
    for batch_size in batch_sizes:
        row = dict(model=name, device=str(device), batch=batch_size)
        row.update(trainable=summary["all"][0], total=summary["all"][1])
        try:
            row.update(bench_training(model, device, batch_size, iters, warmup))
        except torch.OutOfMemoryError:
            row.update(images_per_s=float("nan"), peak_mb=float("nan"), note="out of memory")
            torch.cuda.empty_cache()
        rows.append(row)
    rows[0].update(bench_inference(model, device, iters, warmup))
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    header = (
        "| model | device | batch | train img/s | peak MB | infer ms/img | ms/extra expr "
        "| trainable | total |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        infer = f"{r['ms_per_image']:.1f}" if "ms_per_image" in r else ""
        extra = f"{r['ms_per_extra_expression']:.2f}" if "ms_per_extra_expression" in r else ""
        lines.append(
            f"| {r['model']} | {r['device']} | {r['batch']} | {r['images_per_s']:.2f} "
            f"| {r['peak_mb']:.0f} | {infer} | {extra} | {r['trainable']:,} | {r['total']:,} |"
            + (f" {r['note']}" if "note" in r else "")
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ side by side with a baseline
# Today's main when issue 16 (model speed) was filed: the code every speed-up is measured against.
BASELINE_COMMIT = "1ea497e"
RESULT_TAG = "MODEL_BENCH_RESULT "


def _clipsam_b(root: Path, code_root: Path, quick: bool) -> Config:
    cfg = Config.fromfile(str(code_root / "configs/clipsam/clipsam-b_joint.py"))
    vlm = copy.deepcopy(SIGLIP2_SO400M)
    if quick:
        for tower in ("text_config", "vision_config"):
            vlm[tower]["num_hidden_layers"] = 3
        vlm["text_config"]["vocab_size"] = 32000
        cfg.model.sam.arch = dict(base="vit_b", depth=4, global_attn_indexes=(3,))
    cfg.model.vlm = dict(config=vlm)
    cfg.model.sam.checkpoint = None
    cfg.model.data_preprocessor.vlm_path = _processing_folder(root, 384)
    return cfg


# Models the comparison can time: name -> builder(tmp folder, code root, quick) -> Config, built
# from the configs of the code under test. The SAM 2.1 family adds its rows here.
COMPARISON_MODELS = {"b": _clipsam_b}


def _timed_steps(step, warmup: int, iters: int) -> dict:
    wall, cpu = [], []
    for _ in range(warmup + iters):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return dict(
        seconds=min(wall[warmup:]),
        cpu_seconds=min(cpu[warmup:]),
        first_seconds=wall[0],
        first_cpu_seconds=cpu[0],
    )


COMPILE_MODES = ("eager", "compile", "compile-freezing")


def _compile_towers(model, mode: str) -> None:
    """``torch.compile`` the transformer towers in place (``mode`` one of COMPILE_MODES)."""
    if mode == "eager":
        return
    import torch._inductor.config as inductor_config

    inductor_config.freezing = mode == "compile-freezing"
    for tower in (model.sam.image_encoder, model.vlm.vision.encoder, model.vlm.text):
        tower.compile()


def _comparison_step(
    model_name: str,
    precision: str,
    task: str,
    root: Path,
    code_root: Path,
    quick: bool,
    compile_mode: str = "eager",
):
    """A function running one training step or one inference call of the named model."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    cfg = COMPARISON_MODELS[model_name](root, code_root, quick)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    _compile_towers(model, compile_mode)
    batch = make_batch(1, model.data_preprocessor.size)
    if task == "train":
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        wrapper = OptimWrapper(optimizer=optimizer, clip_grad=dict(max_norm=1.0))

        def step():
            with autocast:
                model.train_step(copy.deepcopy(batch), wrapper)
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model.test_step(copy.deepcopy(batch))

    return step


def comparison_worker(args) -> None:
    """One measurement in its own process: ``args.task`` of ``args.model`` with the code in
    ``args.code_root``; prints one tagged JSON line."""
    code_root = Path(args.code_root).resolve()
    sys.path.insert(0, str(code_root))
    torch.set_num_threads(args.threads)
    init_default_scope("mmseg")
    import aerialseg

    if not Path(aerialseg.__file__).resolve().is_relative_to(code_root):
        sys.exit(f"imported {aerialseg.__file__}, not the code under test in {code_root}")
    with tempfile.TemporaryDirectory() as tmp:
        step = _comparison_step(
            args.model, args.precision, args.task, Path(tmp), code_root, args.quick, args.compile
        )
        result = _timed_steps(step, args.warmup, args.iters)
    result.update(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(RESULT_TAG + json.dumps(result), flush=True)


def op_cpu_profile(args, rows: int = 30) -> str:
    """CPU seconds per aten operator (and per operator and input shapes) of one step of the
    current code, measured with the thread's CPU clock around every dispatched operator.

    ``torch.profiler`` reports wall time per operator; on a shared machine that is mostly time
    spent waiting for a core, so this table is what the profile sections of
    ``docs/benchmarks.md`` quote. Backward operators run on the calling thread on CPU, so a
    training step is covered whole.
    """
    from collections import defaultdict

    from torch.utils._python_dispatch import TorchDispatchMode

    class CpuTimePerOp(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seconds = defaultdict(float)
            self.calls = defaultdict(int)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            start = time.thread_time()
            out = func(*args, **(kwargs or {}))
            elapsed = time.thread_time() - start
            shapes = tuple(
                (*a.shape, str(a.dtype).removeprefix("torch."))
                for a in args
                if isinstance(a, torch.Tensor)
            )
            for key in (func.overloadpacket.__name__, (func.overloadpacket.__name__, shapes)):
                self.seconds[key] += elapsed
                self.calls[key] += 1
            return out

    torch.set_num_threads(args.threads)
    init_default_scope("mmseg")
    import aerialseg  # noqa: F401  (registers ClipSAM)

    precision, task = args.op_profile.split("-")
    with tempfile.TemporaryDirectory() as tmp:
        step = _comparison_step(args.models[0], precision, task, Path(tmp), REPO, args.quick)
        step()  # warm-up
        start = time.process_time()
        step()
        plain = time.process_time() - start
        mode = CpuTimePerOp()
        start = time.process_time()
        with mode:
            step()
        profiled = time.process_time() - start
    lines = [
        f"{args.op_profile}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}: "
        f"{plain:.2f} CPU s per step ({profiled:.2f} s with the per-operator clock)",
        "",
        "| operator | input shapes | calls | CPU s | share |",
        "|---|---|---|---|---|",
    ]
    ranked = sorted(mode.seconds.items(), key=lambda item: -item[1])
    for key, seconds in [item for item in ranked if isinstance(item[0], str)][:rows] + [
        item for item in ranked if isinstance(item[0], tuple)
    ][:rows]:
        name, shapes = (key, "all") if isinstance(key, str) else key
        lines.append(
            f"| {name} | {shapes} | {mode.calls[key]} | {seconds:.3f} "
            f"| {100 * seconds / profiled:.1f} % |"
        )
    return "\n".join(lines)


def _run_worker(
    code_root: Path, model: str, precision: str, task: str, args, compile_mode: str = "eager"
) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--code-root"]
    command += [str(code_root), "--models", model, "--precision", precision, "--task", task]
    command += ["--threads", str(args.threads), "--iters", str(args.iters)]
    command += ["--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
    command += ["--compile", compile_mode]
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_root), env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, cwd=code_root, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if done.returncode or not lines:
        raise RuntimeError(
            f"worker failed ({code_root}, {model}, {precision}, {task}, {compile_mode}):\n"
            f"{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(RESULT_TAG) :])


def compare(args) -> list[dict]:
    """Alternate baseline and current runs of every (model, precision, task); summary rows."""
    with tempfile.TemporaryDirectory(prefix="model-bench-") as tmp:
        baseline = Path(tmp) / "baseline"
        git = ["git", "-C", str(REPO)]
        subprocess.run(
            git + ["worktree", "add", "--detach", str(baseline), args.baseline], check=True
        )
        try:
            sides = dict(baseline=baseline, current=REPO)
            results = {}
            for repeat in range(args.repeats):
                for model in args.models:
                    for precision in args.precisions:
                        for task in args.tasks:
                            order = ["baseline", "current"][:: 1 if repeat % 2 == 0 else -1]
                            for side in order:
                                result = _run_worker(sides[side], model, precision, task, args)
                                print(f"{side:8s} {model} {precision} {task}: {result}", flush=True)
                                results.setdefault((model, precision, task, side), []).append(
                                    result
                                )
        finally:
            subprocess.run(git + ["worktree", "remove", "--force", str(baseline)], check=False)
            subprocess.run(git + ["worktree", "prune"], check=False)
    rows = []
    for model in args.models:
        for precision in args.precisions:
            for task in args.tasks:
                row = dict(model=model, precision=precision, task=task)
                for side in ("baseline", "current"):
                    runs = results[(model, precision, task, side)]
                    row[f"{side}_s"] = statistics.median(r["seconds"] for r in runs)
                    row[f"{side}_cpu_s"] = statistics.median(r["cpu_seconds"] for r in runs)
                    row[f"{side}_peak_mb"] = max(r["peak_rss_mb"] for r in runs)
                row["speedup"] = row["baseline_s"] / row["current_s"]
                row["cpu_speedup"] = row["baseline_cpu_s"] / row["current_cpu_s"]
                rows.append(row)
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    lines = [
        "| model | precision | task | baseline s | current s | speed-up | CPU-time speed-up "
        "| baseline peak MB | current peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['task']} | {r['baseline_s']:.2f} "
            f"| {r['current_s']:.2f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x "
            f"| {r['baseline_peak_mb']:.0f} | {r['current_peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def compile_trial(args) -> list[dict]:
    """The current code eagerly and with ``torch.compile``d towers, each in its own process."""
    rows = []
    for precision in args.precisions:
        for task in args.tasks:
            # Freezing folds weights into constants, which only an inference graph can do.
            modes = [m for m in COMPILE_MODES if task == "infer" or m != "compile-freezing"]
            for mode in modes:
                result = _run_worker(REPO, args.models[0], precision, task, args, mode)
                print(f"{precision} {task} {mode}: {result}", flush=True)
                rows.append(dict(precision=precision, task=task, mode=mode, **result))
    return rows


def compile_trial_markdown(rows: list[dict]) -> str:
    lines = [
        "| precision | task | mode | first call s (CPU s) | then s (CPU s) "
        "| CPU-time speed-up vs eager | peak MB |",
        "|---|---|---|---|---|---|---|",
    ]
    eager = {(r["precision"], r["task"]): r for r in rows if r["mode"] == "eager"}
    for r in rows:
        base = eager[(r["precision"], r["task"])]
        lines.append(
            f"| {r['precision']} | {r['task']} | {r['mode']} "
            f"| {r['first_seconds']:.2f} ({r['first_cpu_seconds']:.2f}) "
            f"| {r['seconds']:.2f} ({r['cpu_seconds']:.2f}) "
            f"| {base['cpu_seconds'] / r['cpu_seconds']:.2f}x | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------- frozen-tower feature cache
def bench_feature_cache(root: Path, epochs: int = 3) -> dict:
    """Per-epoch training seconds of the tiny config on the tiny Aerial-D set with frozen image
    towers (LoRA on the text tower only): without the cache, then with a cold and warm cache."""
    from mmengine.runner import Runner

    from aerialseg.models.tiny import write_tiny_aerial_d

    cfg = model_config("tiny", root)
    write_tiny_aerial_d(root / "data")
    cfg.train_dataloader.dataset.data_root = str(root / "data")
    cfg.model.lora.pop("sam_image_encoder")
    cfg.model.lora.pop("vlm_vision")
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    # The training sampler is infinite (iteration-based schedules): an epoch is one pass.
    steps = math.ceil(len(loader.dataset) / cfg.train_dataloader.batch_size)
    batches, seconds = iter(loader), {}
    for label, cache in (("no cache", None), ("cache", dict(dir=str(root / "cache")))):
        cfg.model.feature_cache = cache
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).train()
        params = [p for p in model.parameters() if p.requires_grad]
        wrapper = OptimWrapper(optimizer=torch.optim.AdamW(params, lr=1e-4))
        for epoch in range(epochs if cache else 1):
            start = time.perf_counter()
            for batch in itertools.islice(batches, steps):
                model.train_step(batch, wrapper)
            seconds[f"{label}, epoch {epoch + 1}"] = time.perf_counter() - start
            if cache:
                counts = model.feature_cache
                seconds[f"{label}, epoch {epoch + 1}"] = (
                    f"{seconds[f'{label}, epoch {epoch + 1}']:.2f} s "
                    f"(cache hits {counts.hits}, misses {counts.misses} so far)"
                )
    seconds["images"] = len(loader.dataset)
    seconds.update(_feature_cache_step_b(root))
    return seconds


def _feature_cache_step_b(root: Path) -> dict:
    """One ClipSAM-b training step at reduced depth (real widths and resolutions) with frozen
    image towers (LoRA on the text tower only): no cache, then a warm cache."""
    cfg = _clipsam_b(root, REPO, quick=True)
    for tower in ("sam_image_encoder", "vlm_vision"):
        cfg.model.lora.pop(tower)
    cfg.model.feature_cache = dict(dir=str(root / "cache-b"))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    wrapper = OptimWrapper(optimizer=torch.optim.AdamW(params, lr=1e-4))
    batch = make_batch(1, model.data_preprocessor.size)
    cache, timings = model.feature_cache, {}
    for label, use_cache in (("warm-up", True), ("no cache", False), ("warm cache", True)):
        model.feature_cache = cache if use_cache else None
        start = time.process_time()
        model.train_step(copy.deepcopy(batch), wrapper)
        timings[f"ClipSAM-b reduced depth, one step, {label} (CPU s)"] = time.process_time() - start
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=sorted({"tiny", *CONFIGS, *COMPARISON_MODELS})
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", nargs="+", type=int)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default 2)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--compare", action="store_true", help="side by side with --baseline")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="commit to compare with")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=1, help="alternating rounds")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["train", "infer"],
        default=["train", "infer"],
        help="training step and/or inference call (--compare, --compile-trial)",
    )
    parser.add_argument("--quick", action="store_true", help="reduced depths (see above)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--code-root", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--compile", default="eager", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compile-trial",
        action="store_true",
        help="current code eager vs torch.compile'd towers (inference and training step)",
    )
    parser.add_argument(
        "--feature-cache", action="store_true", help="per-epoch time with the frozen-tower cache"
    )
    parser.add_argument(
        "--op-profile",
        choices=[f"{p}-{t}" for p in ("fp32", "bf16") for t in ("train", "infer")],
        help="CPU seconds per operator of one step of the current code (with --quick: reduced "
        "depth)",
    )
    args = parser.parse_args(argv)
    if args.op_profile:
        args.models = args.models or ["b"]
        args.threads = args.threads or 1
        print(op_cpu_profile(args))
        return
    if args.feature_cache:
        torch.set_num_threads(args.threads or 1)
        init_default_scope("mmseg")
        import aerialseg  # noqa: F401  (registers ClipSAM)

        with tempfile.TemporaryDirectory() as tmp:
            result = bench_feature_cache(Path(tmp))
        print(f"{torch.get_num_threads()} threads, {result.pop('images')} training samples")
        for label, value in result.items():
            print(f"| {label} | {value if isinstance(value, str) else f'{value:.2f} s'} |")
        return
    if args.compare or args.worker or args.compile_trial:
        args.models = args.models or ["b"]
        args.threads = args.threads or 2
        args.iters = args.iters or 1
        args.warmup = 1 if args.warmup is None else args.warmup
        if args.worker:
            args.model = args.models[0]
            comparison_worker(args)
            return
        if args.compile_trial:
            title, measure, table = "torch.compile trial", compile_trial, compile_trial_markdown
        else:
            title = f"baseline {args.baseline} vs the working tree"
            measure, table = compare, comparison_markdown
        print(
            f"{title}; torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}, {args.threads} threads, "
            f"load average {os.getloadavg()[0]:.1f}, "
            + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        )
        rows = measure(args)
        print("\n" + table(rows))
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    # Fixed, never torch's default: a busy machine makes extra OpenMP threads spin.
    torch.set_num_threads(args.threads or 2)

    cuda = torch.cuda.is_available()
    gpu = torch.device("cuda" if args.device == "auto" else args.device) if cuda else None
    if args.device not in ("auto", "cpu") and not cuda:
        sys.exit(f"--device {args.device}: CUDA is not available")
    plans = []
    models = args.models or (["tiny", "b", "l", "clipsam2-l"] if cuda else ["tiny"])
    for name in models:
        device = torch.device("cpu") if (name == "tiny" or gpu is None) else gpu
        if args.device == "cpu":
            device = torch.device("cpu")
        default_sizes = [4] if device.type == "cpu" else [1, 2, 4, 8]
        iters = args.iters or (20 if device.type == "cpu" else 10)
        warmup = args.warmup if args.warmup is not None else (3 if device.type == "cpu" else 3)
        plans.append((name, device, args.batch_sizes or default_sizes, iters, warmup))

    init_default_scope("mmseg")
    import aerialseg  # noqa: F401  (registers ClipSAM)

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name(gpu)}" if gpu is not None else "")
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, device, sizes, iters, warmup in plans:
            rows.extend(run(name, device, sizes, iters, warmup, Path(tmp)))
            print(markdown(rows[-len(sizes) :]), flush=True)
    print("\n" + markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
