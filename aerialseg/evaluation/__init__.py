"""Evaluation: the referring metric (mmseg ``METRICS``), benchmark tables, the test runner."""

from aerialseg.evaluation.metrics import ReferringMetric, summarize_ious
from aerialseg.evaluation.tables import format_markdown, metric_rows, write_benchmark_tables
from aerialseg.evaluation.test_runner import (
    add_historic_filter,
    collect_test_sets,
    run_test_sets,
    test_main,
)

__all__ = [
    "ReferringMetric",
    "add_historic_filter",
    "collect_test_sets",
    "format_markdown",
    "metric_rows",
    "run_test_sets",
    "summarize_ious",
    "test_main",
    "write_benchmark_tables",
]
