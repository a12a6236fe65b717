"""ClipSAM speed and memory: training images/s, peak memory, inference ms/image, parameter counts.

    python benchmarks/model_bench.py                 # tiny on CPU; + ClipSAM-b/-l when CUDA is up
    python benchmarks/model_bench.py --models b l --device cuda --batch-sizes 1 2 4 8

The tiny model is built from ``configs/clipsam/clipsam-tiny_aerial-d.py`` with checkpoints written
by :mod:`aerialseg.models.tiny`. ClipSAM-b/-l use the real architecture dimensions (SigLIP 2
so400m/14@384 with its 256k vocabulary, SAM ViT-B/ViT-L at 1024) with random weights, so nothing
is downloaded; only the tokenizer and image statistics come from a small local folder. GPU runs use
bf16 autocast through mmengine's ``AmpOptimWrapper`` (as the configs do); CPU runs use fp32.
Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and the process's peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
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
CONFIGS = dict(
    b=REPO / "configs/clipsam/clipsam-b_joint.py", l=REPO / "configs/clipsam/clipsam-l_joint.py"
)
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
    cfg.model.vlm = dict(config=SIGLIP2_SO400M)
    cfg.model.sam.checkpoint = None
    cfg.model.data_preprocessor.vlm_path = _processing_folder(root, 384)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["tiny", "b", "l"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", nargs="+", type=int)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = torch.cuda.is_available()
    gpu = torch.device("cuda" if args.device == "auto" else args.device) if cuda else None
    if args.device not in ("auto", "cpu") and not cuda:
        sys.exit(f"--device {args.device}: CUDA is not available")
    plans = []
    models = args.models or (["tiny", "b", "l"] if cuda else ["tiny"])
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
