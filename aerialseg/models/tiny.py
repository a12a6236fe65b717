"""Tiny random-initialised SigLIP and SAM checkpoints, written in the real on-disk formats.

The tiny config, the tests and the demo train ClipSAM on CPU in seconds. Their checkpoints are
written here, locally and deterministically, and then loaded by exactly the code that loads the
real ones:

* ``<out>/siglip/``: a Hugging Face ``SiglipModel`` folder (``config.json``, ``model.safetensors``),
  a BPE tokenizer trained with ``tokenizers`` on a built-in aerial vocabulary
  (``tokenizer.json``; ``</s>``-terminated and ``<pad>``-padded like SigLIP's) and a
  ``SiglipImageProcessor`` config (64 px, mean/std 0.5);
* ``<out>/sam_tiny.pth``: an official-layout SAM state dict of the ``'tiny'`` architecture
  (128 px input, 8 x 8 embedding, width 32).

:func:`write_tiny_aerial_d` writes a small learnable Aerial-D set in the real XML layout
(coloured buildings and storage tanks in the four quadrants of 128 x 128 patches), so the tiny
config has data to train on before any dataset is downloaded.

Run ``python -m aerialseg.models.tiny`` to write both where the tiny config expects them
(``checkpoints/tiny`` and ``data/tiny_aerial_d``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEFAULT_TINY_DIR = "checkpoints/tiny"
DEFAULT_TINY_DATA = "data/tiny_aerial_d"
SIGLIP_FOLDER = "siglip"
SAM_FILE = "sam_tiny.pth"
TEXT_LENGTH = 64
SIGLIP_IMAGE_SIZE = 64

_CATEGORIES = (
    "plane ship storage tank baseball diamond tennis court basketball court ground track field "
    "harbor bridge large vehicle small vehicle helicopter roundabout soccer ball field swimming "
    "pool building road water barren forest agriculture car truck airplane house tree river lake "
    "parking lot runway square circle triangle"
)
_WORDS = (
    "the a an all in of on at to with and or near next by from its their this that is are "
    "top bottom left right center middle upper lower corner edge side north south east west "
    "white black red blue green gray grey dark light yellow orange brown bright "
    "closest farthest largest smallest biggest first second third last group pair row column "
    "two three four five many single only other image area areas region patch part "
    "above below beside between surrounded parked moving long short wide narrow"
)


@dataclass(frozen=True)
class TinyCheckpoints:
    """Paths written by :func:`write_tiny_checkpoints`."""

    vlm_path: str
    sam_path: str
    sam_arch: str = "tiny"


def _corpus() -> list[str]:
    words = (_CATEGORIES + " " + _WORDS).split()
    # Short phrases so BPE merges whole frequent words; deterministic order.
    return [" ".join(words[i : i + 6]) for i in range(len(words))] * 4


def build_tiny_tokenizer():
    """A lower-casing BPE ``PreTrainedTokenizerFast`` whose byte alphabet covers all ASCII text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TEXT_LENGTH,
    )


def tiny_siglip_config(tokenizer) -> dict:
    """``SiglipConfig`` arguments of the tiny towers (width 32, 2 layers, 8 x 8 patch grid)."""
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    return dict(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=TEXT_LENGTH,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        ),
        vision_config=dict(tower, image_size=SIGLIP_IMAGE_SIZE, patch_size=8),
    )


def _write_siglip(folder: Path, seed: int) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel
    from transformers.utils import logging as hf_logging

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(**tiny_siglip_config(tokenizer)))
    with torch.no_grad():
        # SigLIP's initial temperature (scale 10); bias 0 instead of -10 so that the untrained
        # activation maps start near 0.5 rather than 0 and pass gradients from the first step.
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.zero_()
    # save_pretrained compares against a default SiglipConfig (32k vocabulary) and warns that our
    # token ids do not fit *that* vocabulary; the saved config itself is consistent.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(
        size=dict(height=SIGLIP_IMAGE_SIZE, width=SIGLIP_IMAGE_SIZE),
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(folder)


def _write_sam(path: Path, seed: int) -> None:
    from aerialseg.models.sam import SamParts

    torch.manual_seed(seed)
    state = SamParts(arch="tiny").official_state_dict()
    torch.save(state, path)


def write_tiny_checkpoints(
    out_dir: str | os.PathLike = DEFAULT_TINY_DIR, seed: int = 0, overwrite: bool = False
) -> TinyCheckpoints:
    """Write the tiny SigLIP folder and SAM ``.pth`` into ``out_dir`` (atomically; files that
    already exist are kept unless ``overwrite``).

    Returns:
        the two paths, for ``model.vlm.pretrained`` and ``model.sam.checkpoint``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vlm_path, sam_path = out / SIGLIP_FOLDER, out / SAM_FILE
    if overwrite or not (vlm_path / "config.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".siglip-", dir=out))
        try:
            _write_siglip(staging, seed)
            if vlm_path.exists():
                shutil.rmtree(vlm_path)
            os.replace(staging, vlm_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if overwrite or not sam_path.is_file():
        handle, staging_file = tempfile.mkstemp(prefix=".sam-", suffix=".pth", dir=out)
        os.close(handle)
        try:
            _write_sam(Path(staging_file), seed)
            os.replace(staging_file, sam_path)
        finally:
            if os.path.exists(staging_file):
                os.remove(staging_file)
    return TinyCheckpoints(vlm_path=str(vlm_path), sam_path=str(sam_path))


# (RGB colour, name) and the quadrants that expressions name.
_PALETTE = (
    ((220, 30, 30), "red"),
    ((30, 60, 220), "blue"),
    ((40, 180, 60), "green"),
    ((235, 220, 40), "yellow"),
    ((245, 245, 245), "white"),
)
_QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
_SHAPES = (("building", "square"), ("storage tank", "disk"))
TINY_PATCH = 128


def _tiny_scene(rng, size: int):
    """One patch: a textured grey image with 2-3 objects in distinct quadrants.

    Returns the RGB image and ``[(category, colour, quadrant, mask)]``.
    """
    image = rng.integers(85, 115, size=(size, size, 3), dtype=np.uint8)
    half = size // 2
    objects = []
    colours = rng.permutation(len(_PALETTE))
    for slot, quadrant in enumerate(rng.permutation(len(_QUADRANTS))[: rng.integers(2, 4)]):
        category, shape = _SHAPES[rng.integers(len(_SHAPES))]
        colour, colour_name = _PALETTE[colours[slot]]
        side = int(rng.integers(half // 2, half - 8))
        top = (quadrant // 2) * half + int(rng.integers(4, half - side - 3))
        left = (quadrant % 2) * half + int(rng.integers(4, half - side - 3))
        mask = np.zeros((size, size), dtype=np.uint8)
        if shape == "square":
            mask[top : top + side, left : left + side] = 1
        else:
            yy, xx = np.mgrid[:size, :size]
            radius = side / 2
            inside = (yy - top - radius + 0.5) ** 2 + (xx - left - radius + 0.5) ** 2
            mask[inside <= radius**2] = 1
        image[mask == 1] = colour
        objects.append((category, colour_name, _QUADRANTS[quadrant], mask))
    return image, objects


def _tiny_annotation(filename: str, objects, size: int):
    from aerialseg.datasets.aerial_d_format import (
        AerialGroup,
        AerialObject,
        Expression,
        PatchAnnotation,
        RLEMask,
    )

    annotation_objects, groups = [], []
    for index, (category, colour, quadrant, mask) in enumerate(objects):
        rows, cols = np.nonzero(mask)
        annotation_objects.append(
            AerialObject(
                id=str(index + 1),
                category=category,
                bbox=(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1),
                mask=RLEMask.from_mask(mask),
                area=int(mask.sum()),
                attributes={"possible_colors": colour},
                expressions=[
                    Expression(f"the {colour} {category} in the {quadrant}", id="0"),
                    Expression(f"the {category} at the {quadrant}", type="enhanced", source_id="0"),
                    Expression(f"the {colour} {category}", type="unique"),
                ],
            )
        )
    for offset, (category, _) in enumerate(_SHAPES):
        masks = [mask for cat, _, _, mask in objects if cat == category]
        if masks:
            groups.append(
                AerialGroup(
                    id=str(1_000_000 + offset),  # the class-level "semantic" id range
                    category=category,
                    size=len(masks),
                    mask=RLEMask.from_mask(np.maximum.reduce(masks)),
                    expressions=[Expression(f"all {category}s in the image", id="0")],
                )
            )
    return PatchAnnotation(
        filename=filename, width=size, height=size, objects=annotation_objects, groups=groups
    )


def write_tiny_aerial_d(
    root: str | os.PathLike = DEFAULT_TINY_DATA,
    num_train: int = 48,
    num_val: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, int]:
    """Write a small Aerial-D set in the XML release layout (``root/{train,val}/{images,
    annotations}``); deterministic under ``seed``. An existing split is kept unless ``overwrite``.

    Returns:
        the number of patches per split.
    """
    from PIL import Image

    from aerialseg.datasets.aerial_d_format import write_patch_xml

    rng = np.random.default_rng(seed)
    root = Path(root)
    counts = dict(train=num_train, val=num_val)
    for split, count in counts.items():
        scenes = [_tiny_scene(rng, TINY_PATCH) for _ in range(count)]
        ann_dir, img_dir = root / split / "annotations", root / split / "images"
        if ann_dir.is_dir() and any(ann_dir.iterdir()) and not overwrite:
            continue
        for directory in (ann_dir, img_dir):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        offset = 0 if split == "train" else num_train
        for index, (image, objects) in enumerate(scenes):
            stem = f"P{offset + index:04d}_patch_000000"
            staging = img_dir / f".{stem}.png"
            Image.fromarray(image).save(staging, format="PNG")
            os.replace(staging, img_dir / f"{stem}.png")
            write_patch_xml(
                _tiny_annotation(f"{stem}.png", objects, TINY_PATCH),
                ann_dir / f"{stem}.xml",
            )
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default=DEFAULT_TINY_DIR, help="checkpoint folder")
    parser.add_argument("--data", default=DEFAULT_TINY_DATA, help="tiny Aerial-D folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    paths = write_tiny_checkpoints(args.out_dir, args.seed, args.overwrite)
    counts = write_tiny_aerial_d(args.data, seed=args.seed, overwrite=args.overwrite)
    print(f"SigLIP folder: {paths.vlm_path}\nSAM checkpoint: {paths.sam_path}")
    print(f"tiny Aerial-D: {args.data} ({counts['train']} train / {counts['val']} val patches)")


if __name__ == "__main__":
    main()
