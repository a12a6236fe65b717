"""Referring-segmentation metric: mIoU, oIoU and Pr@X with per-dataset and per-subset breakdowns."""

from __future__ import annotations

import json
import os.path as osp
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from datagen.storage import atomic_open

__all__ = ["ReferringMetric", "summarize_ious"]

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
RECORD_META_KEYS = (
    "dataset_name",
    "img_id",
    "target_id",
    "expr_id",
    "expr_type",
    "target_type",
    "subset",
    "category",
    "historic",
)


def summarize_ious(
    intersections: np.ndarray,
    unions: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    comparison: str = ">=",
) -> dict[str, float]:
    """Scores of a set of samples from their pixel intersections and unions (shape (N,)).

    A sample with an empty union (empty prediction and empty target) has IoU 1. Returns percentages:
    ``mIoU`` (mean per-sample IoU), ``oIoU`` (sum of intersections / sum of unions; 100 when every
    union is empty), ``Pr@t`` (share of samples with IoU ``comparison`` t) and ``N``.
    """
    intersections = np.asarray(intersections, dtype=np.float64)
    unions = np.asarray(unions, dtype=np.float64)
    if comparison not in (">=", ">"):
        raise ValueError(f"comparison must be '>=' or '>', got {comparison!r}")
    ious = np.divide(intersections, unions, out=np.ones_like(unions), where=unions > 0)
    total_union = unions.sum()
    scores = {
        "mIoU": 100.0 * float(ious.mean()) if ious.size else float("nan"),
        "oIoU": 100.0 * float(intersections.sum() / total_union) if total_union > 0 else 100.0,
    }
    thresholds = np.asarray(thresholds, dtype=np.float64)
    passed = ious[:, None] >= thresholds if comparison == ">=" else ious[:, None] > thresholds
    rates = passed.mean(axis=0) if ious.size else np.full(thresholds.shape, np.nan)
    for threshold, rate in zip(thresholds, rates):
        scores[f"Pr@{threshold:g}"] = 100.0 * float(rate)
    scores["N"] = int(ious.size)
    return scores


@METRICS.register_module()
class ReferringMetric(BaseMetric):
    """mIoU, oIoU and Pr@X for referring segmentation.

    Per sample, ``pred_sem_seg`` (1, H, W) and ``gt_sem_seg`` (1, H, W) are compared as binary
    masks (foreground = value 1). By default at the **original resolution**: the prediction must
    already be at the target's size (the model contract returns it at ``ori_shape``), and a size
    mismatch is an error rather than a silent resize. ``eval_size=(480, 480)`` reproduces the
    RMSIN/LAVT protocol instead: both masks are resized (nearest) to that size first.

    Results are percentages under the keys ``mIoU``, ``oIoU``, ``Pr@0.5`` ... ``N`` for all
    samples, ``<dataset>/<key>`` per dataset and ``<dataset>/<field>=<value>/<key>`` for each
    ``breakdown_keys`` field (target type, expression type, subset, category, ...).

    Args:
        iou_thrs: the Pr@X thresholds.
        threshold_comparison: ``'>='`` (RMSIN/LAVT) or ``'>'`` (RSRefSeg).
        eval_size: ``None`` for the original resolution, or ``(h, w)``.
        breakdown_keys: metainfo fields to break the scores down by, within each dataset.
        output_dir: if set, ``per_sample.jsonl`` (ids, intersection, union, IoU, predicted RLE) is
            written there for offline analysis.
    """

    default_prefix = ""  # no prefix: keys read "mIoU", "rrsisd/mIoU", ...

    def __init__(
        self,
        iou_thrs: Sequence[float] = DEFAULT_THRESHOLDS,
        threshold_comparison: str = ">=",
        eval_size: Sequence[int] | None = None,
        breakdown_keys: Sequence[str] = ("target_type", "expr_type", "subset", "category"),
        output_dir: str | None = None,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if threshold_comparison not in (">=", ">"):
            raise ValueError(
                f"threshold_comparison must be '>=' or '>', got {threshold_comparison!r}"
            )
        if eval_size is not None and len(eval_size) != 2:
            raise ValueError(f"eval_size must be (h, w), got {eval_size}")
        self.iou_thrs = tuple(float(t) for t in iou_thrs)
        self.threshold_comparison = threshold_comparison
        self.eval_size = tuple(int(v) for v in eval_size) if eval_size is not None else None
        self.breakdown_keys = tuple(breakdown_keys)
        self.output_dir = output_dir

    def _masks(self, data_sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pred = data_sample["pred_sem_seg"]["data"].squeeze(0) == 1
        gt = data_sample["gt_sem_seg"]["data"].squeeze(0).to(pred.device) == 1
        if self.eval_size is not None:
            pred, gt = (
                mask
                if tuple(mask.shape) == self.eval_size
                else F.interpolate(mask[None, None].float(), size=self.eval_size, mode="nearest")[
                    0, 0
                ]
                > 0.5
                for mask in (pred, gt)
            )
        elif pred.shape != gt.shape:
            ids = "/".join(str(data_sample.get(k, "?")) for k in ("img_id", "target_id", "expr_id"))
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(gt.shape)} differ in size for "
                f"sample {ids}: predictions must be at ori_shape (or set eval_size)"
            )
        return pred, gt

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for data_sample in data_samples:
            pred, gt = self._masks(data_sample)
            # Full-tensor reductions; per-row reductions over a stacked batch are slower on CPU.
            intersection = int(torch.count_nonzero(pred & gt))
            union = int(torch.count_nonzero(pred)) + int(torch.count_nonzero(gt)) - intersection
            record = {key: data_sample.get(key, "") for key in RECORD_META_KEYS}
            record["intersection"], record["union"] = intersection, union
            if self.output_dir is not None:
                from pycocotools import mask as mask_utils

                rle = mask_utils.encode(np.asfortranarray(pred.cpu().numpy().astype(np.uint8)))
                record["pred_rle"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
            self.results.append(record)

    def _groups(self, results: list[dict]) -> dict[str, np.ndarray]:
        """Sample indices per reported group: all, each dataset, each dataset x breakdown value."""
        groups: dict[str, list[int]] = {}
        for index, record in enumerate(results):
            dataset = record["dataset_name"] or "unknown"
            groups.setdefault(dataset, []).append(index)
            for key in self.breakdown_keys:
                value = record.get(key)
                if value not in ("", None):
                    groups.setdefault(f"{dataset}/{key}={value}", []).append(index)
        return {name: np.asarray(indices) for name, indices in groups.items()}

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        if not results:
            raise ValueError("ReferringMetric received no samples")
        intersections = np.array([r["intersection"] for r in results], dtype=np.float64)
        unions = np.array([r["union"] for r in results], dtype=np.float64)
        summary = self._scores(intersections, unions)
        for name, indices in sorted(self._groups(results).items()):
            for key, value in self._scores(intersections[indices], unions[indices]).items():
                summary[f"{name}/{key}"] = value
        if self.output_dir is not None:
            self._write_records(results, intersections, unions)
        from aerialseg.evaluation.tables import format_markdown, metric_rows

        print_log("\n" + format_markdown(metric_rows("", summary)), logger="current")
        return summary

    def _scores(self, intersections: np.ndarray, unions: np.ndarray) -> dict[str, float]:
        return summarize_ious(intersections, unions, self.iou_thrs, self.threshold_comparison)

    def _write_records(self, results: list[dict], intersections, unions) -> None:
        path = osp.join(self.output_dir, "per_sample.jsonl")
        ious = np.divide(intersections, unions, out=np.ones_like(unions), where=unions > 0)
        with atomic_open(path, "w", encoding="utf-8") as stream:
            for record, iou in zip(results, ious):
                stream.write(json.dumps({**record, "iou": float(iou)}) + "\n")
