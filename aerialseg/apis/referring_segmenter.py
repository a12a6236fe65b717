"""Inference API: segment the targets of several expressions in one image.

>>> segmenter = ReferringSegmenter("configs/clipsam/clipsam-b_joint.py", "work_dirs/b/iter_8k.pth")
>>> result = segmenter.predict(image_rgb, ["the white car in the top left", "all buildings"])
>>> result.masks.shape  # (2, H, W) bool at the image's own size

The image is resized exactly as the config's test pipeline resizes it (its ``Resize`` step),
encoded once by SAM and SigLIP, and the expressions are decoded against those features in batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS, TRANSFORMS
from mmseg.structures import SegDataSample

from aerialseg.engine import safe_torch_load
from aerialseg.models.checkpoint_keys import CheckpointMismatchError

_RESIZE_TYPES = ("ReferringResize", "Resize")


@dataclass
class ReferringPrediction:
    """Results for N expressions on one H x W image.

    Attributes:
        masks: N x H x W bool.
        scores: N float in [0, 1], SAM's predicted IoU of each mask.
        logits: N x H x W float32 mask logits (sigmoid > 0.5 gives ``masks`` by default).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


def _config_from_checkpoint(checkpoint: str) -> Config:
    state = safe_torch_load(checkpoint, map_location="cpu")
    text = state.get("meta", {}).get("cfg") if isinstance(state, dict) else None
    if not text:
        raise ValueError(f"checkpoint '{checkpoint}' stores no config; pass the config file too")
    return Config.fromstring(text, ".py")


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
    """

    def __init__(
        self,
        config: str | os.PathLike | Config | None,
        checkpoint: str | os.PathLike | None = None,
        device: str = "cpu",
        text_batch_size: int = 16,
        amp: bool = False,
        cfg_options: dict | None = None,
    ):
        if config is None:
            if checkpoint is None:
                raise ValueError("give a config, a checkpoint, or both")
            cfg = _config_from_checkpoint(os.fspath(checkpoint))
        elif isinstance(config, Config):
            cfg = config.copy()
        else:
            if not os.path.isfile(config):
                raise FileNotFoundError(f"config file not found: '{config}'")
            cfg = Config.fromfile(os.fspath(config))
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        init_default_scope(cfg.get("default_scope", "mmseg"))
        self.cfg = cfg
        self.model = MODELS.build(cfg.model)
        if checkpoint is not None:
            try:
                load_checkpoint(self.model, os.fspath(checkpoint), map_location="cpu", strict=True)
            except RuntimeError as error:
                if "do not match" not in str(error):
                    raise
                raise CheckpointMismatchError(
                    f"checkpoint '{checkpoint}' does not match the model of this config: {error}"
                ) from None
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
