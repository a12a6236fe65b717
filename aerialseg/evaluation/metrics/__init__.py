"""Registered metrics."""

from aerialseg.evaluation.metrics.referring_metric import ReferringMetric, summarize_ious

__all__ = ["ReferringMetric", "summarize_ious"]
