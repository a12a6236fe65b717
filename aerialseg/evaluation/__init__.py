"""Evaluation: the referring metric (mmseg ``METRICS``) and its named protocols, benchmark tables
with provenance and mean ± std over runs, the test runner."""

from aerialseg.evaluation.metrics import ReferringMetric, summarize_ious
from aerialseg.evaluation.protocols import PROTOCOLS, EvalProtocol, get_protocol
from aerialseg.evaluation.provenance import compare_provenance, run_provenance
from aerialseg.evaluation.tables import (
    aggregate_runs,
    format_markdown,
    metric_rows,
    write_benchmark_tables,
)
from aerialseg.evaluation.test_runner import (
    add_historic_filter,
    collect_test_sets,
    run_test_sets,
    test_main,
)

__all__ = [
    "PROTOCOLS",
    "EvalProtocol",
    "ReferringMetric",
    "aggregate_runs",
    "compare_provenance",
    "get_protocol",
    "run_provenance",
    "add_historic_filter",
    "collect_test_sets",
    "format_markdown",
    "metric_rows",
    "run_test_sets",
    "summarize_ious",
    "test_main",
    "write_benchmark_tables",
]
