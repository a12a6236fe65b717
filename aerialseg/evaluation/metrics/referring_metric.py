"""Referring-segmentation metric: mIoU, oIoU and Pr@X with per-dataset and per-subset breakdowns,
scored under a named protocol (:mod:`aerialseg.evaluation.protocols`)."""

from __future__ import annotations

import json
import os.path as osp
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

from aerialformats.atomic import atomic_open
from aerialseg.evaluation.protocols import get_protocol, pil_nearest_indices

__all__ = ["ReferringMetric", "summarize_ious"]

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
EMPTY_UNION_IOU = {"one": 1.0, "zero": 0.0, "nan": float("nan")}
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
    empty_union: str = "one",
    skip_nan: bool = False,
) -> dict[str, float]:
    """Scores of a set of samples from their pixel intersections and unions (shape (N,)).

    Args:
        comparison: ``'>='`` or ``'>'``: a sample passes Pr@t when its IoU ``comparison`` t.
        empty_union: IoU of a sample with an empty union (empty prediction and empty target):
            ``'one'`` (ours), ``'zero'`` (RMSIN/LAVT) or ``'nan'`` (RSRefSeg 2's unguarded 0/0; a
            NaN IoU fails every Pr@t and makes mIoU NaN unless ``skip_nan``).
        skip_nan: average only the non-NaN IoUs (RSRefSeg 2's per-category table).

    Returns:
        Percentages ``mIoU`` (mean per-sample IoU), ``oIoU`` (sum of intersections / sum of
        unions; when every union is empty: 100, 0 or NaN by ``empty_union``), ``Pr@t`` and ``N``.
    """
    intersections = np.asarray(intersections, dtype=np.float64)
    unions = np.asarray(unions, dtype=np.float64)
    if comparison not in (">=", ">"):
        raise ValueError(f"comparison must be '>=' or '>', got {comparison!r}")
    empty_iou = EMPTY_UNION_IOU.get(empty_union)
    if empty_iou is None:
        raise ValueError(
            f"empty_union must be one of {tuple(EMPTY_UNION_IOU)}, got {empty_union!r}"
        )
    ious = np.divide(intersections, unions, out=np.full_like(unions, empty_iou), where=unions > 0)
    total_union = unions.sum()
    averaged = ious[~np.isnan(ious)] if skip_nan else ious
    scores = {
        "mIoU": 100.0 * float(averaged.mean()) if averaged.size else float("nan"),
        "oIoU": 100.0 * float(intersections.sum() / total_union)
        if total_union > 0
        else 100.0 * empty_iou,
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
    """mIoU, oIoU and Pr@X for referring segmentation, under a named evaluation protocol.

    Per sample, ``pred_sem_seg`` (1, H, W) and ``gt_sem_seg`` (1, H, W) are compared as binary
    masks (foreground = value 1). The protocol (:mod:`aerialseg.evaluation.protocols`) fixes the
    resolution, the resize rule, ``>=``/``>`` and the IoU of an empty union:

    - ``original_resolution`` (default): the prediction must already be at the target's size (the
      model contract returns it at ``ori_shape``; a mismatch is an error, never a silent resize);
    - ``rmsin_480``: both masks resized to 480x480 with PIL's NEAREST rule (RMSIN/LAVT);
    - ``rsrefseg_strict``: original resolution, ``>`` and NaN for an empty union (RSRefSeg 2).

    ``threshold_comparison``, ``eval_size`` and ``empty_union`` override the preset's rule; the
    protocol is then reported as ``custom`` with every rule listed.

    Results are percentages under the keys ``mIoU``, ``oIoU``, ``Pr@0.5`` ... ``N`` for all
    samples, ``<dataset>/<key>`` per dataset and ``<dataset>/<field>=<value>/<key>`` for each
    ``breakdown_keys`` field (target type, expression type, subset, category, ...).

    Args:
        protocol: name of a preset in :data:`~aerialseg.evaluation.protocols.PROTOCOLS`.
        iou_thrs: the Pr@X thresholds.
        threshold_comparison: ``'>='`` or ``'>'`` (``None``: the protocol's).
        eval_size: ``(h, w)`` to resize both masks to (``None``: the protocol's).
        empty_union: ``'one'``, ``'zero'`` or ``'nan'`` (``None``: the protocol's).
        breakdown_keys: metainfo fields to break the scores down by, within each dataset.
        output_dir: if set, ``per_sample.jsonl`` is written there: a first line
            ``{"provenance": {...}}`` (the protocol and :attr:`provenance`), then one line per
            sample (ids, intersection, union, IoU, predicted RLE at the scored resolution).
    """

    default_prefix = ""  # no prefix: keys read "mIoU", "rrsisd/mIoU", ...

    def __init__(
        self,
        protocol: str = "original_resolution",
        iou_thrs: Sequence[float] = DEFAULT_THRESHOLDS,
        threshold_comparison: str | None = None,
        eval_size: Sequence[int] | None = None,
        empty_union: str | None = None,
        breakdown_keys: Sequence[str] = ("target_type", "expr_type", "subset", "category"),
        output_dir: str | None = None,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        preset = get_protocol(protocol)
        overrides = dict(
            threshold_comparison=threshold_comparison,
            eval_size=tuple(int(v) for v in eval_size) if eval_size is not None else None,
            empty_union=empty_union,
        )
        overrides = {
            key: value
            for key, value in overrides.items()
            if value is not None and value != getattr(preset, key)
        }
        self.protocol = (
            replace(preset, name="custom", used_by=f"{preset.name} with {overrides}", **overrides)
            if overrides
            else preset
        )
        self.iou_thrs = tuple(float(t) for t in iou_thrs)
        self.breakdown_keys = tuple(breakdown_keys)
        self.output_dir = output_dir
        self.provenance: dict = {}

    # The rules, read by callers and tests.
    @property
    def threshold_comparison(self) -> str:
        return self.protocol.threshold_comparison

    @property
    def eval_size(self) -> tuple[int, int] | None:
        return self.protocol.eval_size

    def describe_protocol(self) -> dict:
        """Every scoring rule, JSON-friendly (recorded in the benchmark tables)."""
        return {**self.protocol.describe(), "iou_thresholds": list(self.iou_thrs)}

    def _resize(self, mask: torch.Tensor) -> torch.Tensor:
        height, width = self.eval_size
        rows = torch.from_numpy(pil_nearest_indices(mask.shape[0], height)).to(mask.device)
        cols = torch.from_numpy(pil_nearest_indices(mask.shape[1], width)).to(mask.device)
        return mask.index_select(0, rows).index_select(1, cols)

    def _masks(self, data_sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        pred = data_sample["pred_sem_seg"]["data"].squeeze(0) == 1
        gt = data_sample["gt_sem_seg"]["data"].squeeze(0).to(pred.device) == 1
        if self.eval_size is not None:
            pred, gt = (
                mask if tuple(mask.shape) == self.eval_size else self._resize(mask)
                for mask in (pred, gt)
            )
        elif pred.shape != gt.shape:
            ids = "/".join(str(data_sample.get(k, "?")) for k in ("img_id", "target_id", "expr_id"))
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(gt.shape)} differ in size for "
                f"sample {ids}: predictions must be at ori_shape (or use a protocol with eval_size)"
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

    def _groups(self, results: list[dict]) -> dict[str, tuple[np.ndarray, str]]:
        """Sample indices (and breakdown field) per reported group: each dataset, each dataset x
        breakdown value."""
        groups: dict[str, tuple[list[int], str]] = {}
        for index, record in enumerate(results):
            dataset = record["dataset_name"] or "unknown"
            groups.setdefault(dataset, ([], ""))[0].append(index)
            for key in self.breakdown_keys:
                value = record.get(key)
                if value not in ("", None):
                    groups.setdefault(f"{dataset}/{key}={value}", ([], key))[0].append(index)
        return {name: (np.asarray(indices), key) for name, (indices, key) in groups.items()}

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        if not results:
            raise ValueError("ReferringMetric received no samples")
        intersections = np.array([r["intersection"] for r in results], dtype=np.float64)
        unions = np.array([r["union"] for r in results], dtype=np.float64)
        summary = self._scores(intersections, unions)
        for name, (indices, key) in sorted(self._groups(results).items()):
            # RSRefSeg 2's per-category table averages over the samples with a defined IoU.
            scores = self._scores(intersections[indices], unions[indices], key == "category")
            for score, value in scores.items():
                summary[f"{name}/{score}"] = value
        if self.output_dir is not None:
            self._write_records(results, intersections, unions)
        from aerialseg.evaluation.tables import format_markdown, metric_rows

        print_log("\n" + format_markdown(metric_rows("", summary)), logger="current")
        return summary

    def _scores(self, intersections, unions, skip_nan: bool = False) -> dict[str, float]:
        return summarize_ious(
            intersections,
            unions,
            self.iou_thrs,
            self.threshold_comparison,
            self.protocol.empty_union,
            skip_nan,
        )

    def _write_records(self, results: list[dict], intersections, unions) -> None:
        path = osp.join(self.output_dir, "per_sample.jsonl")
        empty_iou = EMPTY_UNION_IOU[self.protocol.empty_union]
        ious = np.divide(
            intersections, unions, out=np.full_like(unions, empty_iou), where=unions > 0
        )
        header = {"provenance": {**self.provenance, "protocol": self.describe_protocol()}}
        with atomic_open(path, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(header, default=str) + "\n")
            for record, iou in zip(results, ious):
                iou = None if np.isnan(iou) else float(iou)  # JSON has no NaN
                stream.write(json.dumps({**record, "iou": iou}) + "\n")
