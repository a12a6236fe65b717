"""Inference API: segment the targets of several expressions in one image.

>>> segmenter = ReferringSegmenter("configs/clipsam/clipsam-b_joint.py", "work_dirs/b/iter_8k.pth")
>>> result = segmenter.predict(image_rgb, ["the white car in the top left", "all buildings"])
>>> result.masks.shape  # (2, H, W) bool at the image's own size

The image is resized exactly as the config's test pipeline resizes it (its ``Resize`` step),
encoded once by SAM and SigLIP, and the expressions are decoded against those features in batches.

Loading is portable and strict: the pretrained files named in the (saved) config are found again
from any working directory (:mod:`aerialseg.engine.pretrained`: ``pretrained_root``,
``AERIALSEG_CHECKPOINTS``, the checkpoint's folder) and checked against the sha256 recorded at
training; the checkpoint's tensors must match the model's exactly, apart from the frozen pretrained
ones (:mod:`aerialseg.apis.trained_weights`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample

from aerialseg.apis.trained_weights import load_trained_weights, read_checkpoint
from aerialseg.engine.pretrained import (
    apply_resolved,
    recorded_pretrained_files,
    resolve_pretrained_files,
)

_RESIZE_TYPES = ("ReferringResize", "Resize")


@dataclass
class ReferringPrediction:
    """Results for N expressions on one H x W image.

    Attributes:
        masks: N x H x W bool.
        scores: N float in [0, 1], the model's predicted IoU of each mask (SAM's IoU head): the
            one meaning of "score" in AerialSeg's outputs.
        logits: N x H x W float32 mask logits (sigmoid > 0.5 gives ``masks`` by default).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


def config_from_meta(meta: dict, checkpoint: str) -> Config:
    text = meta.get("cfg")
    if not isinstance(text, str) or not text:
        raise ValueError(f"checkpoint '{checkpoint}' stores no config; pass the config file too")
    return Config.fromstring(text, ".py")


def resolve_model_config(
    cfg: Config,
    checkpoint: str | None = None,
    meta: dict | None = None,
    pretrained_root: str | Iterable[str] | None = None,
    overridden: Iterable[str] = (),
) -> Config:
    """Point ``cfg.model``'s pretrained entries at the files found for them (in place).

    Keys in ``overridden`` (``model.x.y`` as given to ``--cfg-options``) were chosen by the user and
    are not checked against the sha256 recorded in the checkpoint.
    """
    recorded = recorded_pretrained_files(meta)
    for key in overridden:
        recorded.pop(key.removeprefix("model."), None)
    files = resolve_pretrained_files(cfg.model, pretrained_root, checkpoint, recorded)
    cfg.model = apply_resolved(cfg.model.to_dict(), files)
    return cfg


def _test_resize(cfg: Config, size: int) -> dict:
    """The ``Resize`` step of the config's test pipeline (default: longer side to ``size``)."""
    pipeline = cfg.get("test_pipeline") or cfg.get("test_dataloader", {}).get("dataset", {}).get(
        "pipeline", []
    )
    for step in pipeline:
        if step.get("type") in _RESIZE_TYPES:
            step = dict(step)
            step.pop("resize_mask", None)
            step["type"] = "Resize"
            return step
    return dict(type="Resize", scale=(size, size), keep_ratio=True)


class ReferringSegmenter:
    """Load a ClipSAM config (+ trained checkpoint) for inference.

    Args:
        config: config file or :class:`mmengine.Config`; ``None`` reads the config saved in the
            checkpoint.
        checkpoint: a training checkpoint (``iter_*.pth``); ``None`` keeps the model as built
            from the pretrained SigLIP/SAM weights.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ...
        text_batch_size: expressions decoded per forward pass.
        amp: bf16 autocast on CUDA.
        cfg_options: overrides merged into the config (as ``--cfg-options``).
        pretrained_root: folder(s) searched first for the pretrained files
            (``--pretrained-root``; then ``AERIALSEG_CHECKPOINTS`` and the checkpoint's folder).
        allow_partial: load only the checkpoint tensors that match instead of refusing a
            checkpoint with missing or unexpected keys.

    Raises:
        PretrainedFilesError: pretrained files missing (all of them named).
        CheckpointMismatchError: the checkpoint's keys do not match the model.
        CheckpointError: the checkpoint is not a torch checkpoint.
    """

    def __init__(
        self,
        config: str | os.PathLike | Config | None,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        text_batch_size: int = 16,
        amp: bool = False,
        cfg_options: dict | None = None,
        pretrained_root: str | Iterable[str] | None = None,
        allow_partial: bool = False,
    ):
        if config is None and checkpoint is None:
            raise ValueError("give a config, a checkpoint, or both")
        checkpoint = os.fspath(checkpoint) if checkpoint is not None else None
        state = read_checkpoint(checkpoint) if checkpoint is not None else ({}, {})
        if config is None:
            cfg = config_from_meta(state[1], checkpoint)
        elif isinstance(config, Config):
            cfg = config.copy()
        else:
            if not os.path.isfile(config):
                raise FileNotFoundError(f"config file not found: '{config}'")
            cfg = Config.fromfile(os.fspath(config))
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        init_default_scope(cfg.get("default_scope", "mmseg"))
        resolve_model_config(cfg, checkpoint, state[1], pretrained_root, cfg_options or ())
        self.cfg = cfg
        self.model = MODELS.build(cfg.model)
        if checkpoint is not None:
            load_trained_weights(self.model, checkpoint, allow_partial, state=state)
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.preprocessor = self.model.data_preprocessor
        self.resize = TRANSFORMS.build(_test_resize(cfg, self.preprocessor.size))
        self.text_batch_size = text_batch_size
        self.amp = amp and self.device.type == "cuda"

    def _check_image(self, image: np.ndarray) -> None:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB, got {image.dtype}; rescale it to 0-255")
        if min(image.shape[:2]) == 0:
            raise ValueError(f"image is empty: shape {image.shape}")

    @property
    def text_length(self) -> int:
        """Tokens the text tower reads (SigLIP: 64); longer expressions are truncated."""
        return int(self.preprocessor.text_length)

    def token_counts(self, expressions: Sequence[str]) -> list[int]:
        """Tokens of each expression as the model's tokenizer splits it, before truncation."""
        pre = self.preprocessor
        texts = [t.strip().lower() if pre.lowercase else t.strip() for t in expressions]
        return [len(ids) for ids in pre.tokenizer(texts, truncation=False)["input_ids"]]

    def truncation_warnings(self, expressions: Sequence[str]) -> list[str]:
        """One message per expression longer than :attr:`text_length` tokens."""
        return [
            f"expression {index + 1} has {count} tokens; the text tower reads only the first "
            f"{self.text_length}, the rest is ignored"
            for index, count in enumerate(self.token_counts(expressions))
            if count > self.text_length
        ]

    @torch.no_grad()
    def predict(self, image: np.ndarray, expressions: Sequence[str]) -> ReferringPrediction:
        """Masks of ``expressions`` in ``image`` (H x W x 3 uint8 RGB), at the image's size.

        Raises:
            ValueError: a bad image, no expressions, or an empty expression.
        """
        self._check_image(image)
        if isinstance(expressions, str):
            expressions = [expressions]
        expressions = list(expressions)
        if not expressions:
            raise ValueError("no expressions given")
        for index, text in enumerate(expressions):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"expression {index} is empty: {text!r}")
        for message in self.truncation_warnings(expressions):
            print_log(message, logger="current", level=logging.WARNING)
        height, width = image.shape[:2]
        resized = self.resize(dict(img=np.ascontiguousarray(image[:, :, ::-1]), img_shape=None))
        bgr = resized["img"]
        tensor = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))).to(self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        masks, scores, logits = [], [], []
        with autocast:
            canvas, _ = self.preprocessor.prepare_images([tensor])
            inputs = self.preprocessor.normalise(canvas, [bgr.shape[:2]])
            features = self.model.extract_feat(inputs)
            for start in range(0, len(expressions), self.text_batch_size):
                chunk = expressions[start : start + self.text_batch_size]
                input_ids, text_mask = self.preprocessor.tokenize(chunk)
                image_index = torch.zeros(len(chunk), dtype=torch.long, device=self.device)
                outputs = self.model.decode(features, image_index, input_ids, text_mask)
                samples = [
                    SegDataSample(metainfo=dict(img_shape=bgr.shape[:2], ori_shape=(height, width)))
                    for _ in chunk
                ]
                results = self.model.postprocess_result(outputs["masks"], samples, outputs["iou"])
                for sample in results:
                    masks.append(sample.pred_sem_seg.data[0].bool().cpu().numpy())
                    logits.append(sample.seg_logits.data[0].float().cpu().numpy())
                    scores.append(float(sample.pred_score))
        return ReferringPrediction(
            masks=np.stack(masks),
            scores=np.asarray(scores, dtype=np.float32),
            logits=np.stack(logits).astype(np.float32),
        )
