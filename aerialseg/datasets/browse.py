"""Render referring samples (image, target overlay, expression) to PNG files for a visual check."""

from __future__ import annotations

import os
import os.path as osp
import re
import textwrap

import numpy as np
from mmcv.transforms import Compose
from PIL import Image, ImageDraw, ImageFont

from aerialformats.atomic import atomic_open

__all__ = ["BROWSE_PIPELINE", "browse_main", "render_sample", "render_samples"]

# Images and masks at their original size: what the annotation says, before any model resizing.
BROWSE_PIPELINE = [dict(type="LoadImageFromFile"), dict(type="LoadReferringMask")]
OVERLAY_RGB = (255, 64, 64)


def render_sample(
    image_rgb: np.ndarray, mask: np.ndarray, caption: str, alpha: float = 0.45
) -> Image.Image:
    """The image with the target tinted and outlined, above a caption band.

    Args:
        image_rgb: (H, W, 3) uint8.
        mask: (H, W) {0, 1}.
    """
    if image_rgb.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image_rgb.shape[:2]} and mask {mask.shape[:2]} differ in size")
    target = mask.astype(bool)
    tinted = image_rgb.astype(np.float32)
    tinted[target] = (1 - alpha) * tinted[target] + alpha * np.asarray(OVERLAY_RGB, np.float32)
    edge = target & ~_erode(target)
    tinted[edge] = OVERLAY_RGB
    height, width = target.shape
    font = ImageFont.load_default(size=max(12, width // 40))
    characters = max(20, int(width / (font.size * 0.55)))
    lines = textwrap.wrap(caption, characters) or [""]
    line_height = int(font.size * 1.3)
    canvas = Image.new("RGB", (width, height + line_height * len(lines) + 8), (255, 255, 255))
    canvas.paste(Image.fromarray(np.rint(tinted).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, line in enumerate(lines):
        draw.text((4, height + 4 + index * line_height), line, fill=(0, 0, 0), font=font)
    return canvas


def _erode(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary erosion (4-neighbourhood), borders count as background."""
    padded = np.pad(mask, 1, constant_values=False)
    return (
        padded[1:-1, 1:-1]
        & padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:80]


def render_samples(
    dataset, out_dir: str, num: int = 20, seed: int = 0, extra_transforms=()
) -> list[str]:
    """Render ``num`` samples drawn without replacement (seeded) from ``dataset``.

    Args:
        dataset: a built :class:`~aerialseg.datasets.BaseReferringDataset`; its own pipeline is
            not used: images and masks are loaded at their original size.
        extra_transforms: transform configs applied after loading (e.g. a ``HistoricFilter``).

    Returns:
        The written PNG paths, in sampling order.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    pipeline = Compose([*BROWSE_PIPELINE, *extra_transforms])
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(dataset), size=min(num, len(dataset)), replace=False)
    paths = []
    for rank, index in enumerate(indices):
        results = pipeline(dataset.get_data_info(int(index)))
        caption = (
            f"{results['text']}  [{results['dataset_name']} {results['img_id']} "
            f"{results['target_id']} {results['expr_type']}/{results['target_type']}"
            f"{' historic:' + results['historic_mode'] if results.get('historic') else ''}]"
        )
        image = render_sample(results["img"][:, :, ::-1], results["gt_seg_map"], caption)
        name = _safe_name(
            f"{rank:04d}_{results['dataset_name']}_{results['img_id']}_{results['target_id']}_"
            f"{results['expr_id']}"
        )
        path = osp.join(out_dir, f"{name}.png")
        with atomic_open(path, "wb") as stream:
            image.save(stream, format="PNG")
        paths.append(path)
    return paths


def browse_main(argv: list[str] | None = None) -> list[str]:
    """Entry point of ``tools/browse_dataset.py``."""
    import argparse

    from mmengine.config import Config, DictAction
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    parser = argparse.ArgumentParser(description="Render referring samples of a config's dataset")
    parser.add_argument("config", help="config file with train/val/test dataloaders")
    parser.add_argument("--split", choices=("train", "val", "test"), default="train")
    parser.add_argument("--output-dir", default="work_dirs/browse", help="folder for the PNGs")
    parser.add_argument("-n", "--num", type=int, default=20, help="number of samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample choice")
    parser.add_argument(
        "--historic", action="store_true", help="apply the deterministic historic filter"
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides")
    args = parser.parse_args(argv)

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    import aerialseg  # noqa: F401  (registers the datasets and transforms)

    dataloader = cfg.get(f"{args.split}_dataloader")
    if not dataloader:
        raise ValueError(f"{args.config} has no {args.split}_dataloader")
    dataset_cfg = dict(dataloader["dataset"])
    dataset_cfg["pipeline"] = []
    dataset = DATASETS.build(dataset_cfg)
    extra = [dict(type="HistoricFilter", prob=1.0, deterministic=True)] if args.historic else []
    paths = render_samples(dataset, args.output_dir, args.num, args.seed, extra)
    print(f"wrote {len(paths)} images to {args.output_dir}")
    return paths
