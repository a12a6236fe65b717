"""Benchmark tables (Markdown, CSV, JSON) from :class:`ReferringMetric` results."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import os.path as osp
from collections.abc import Mapping, Sequence

from datagen.storage import atomic_write_text

__all__ = ["format_markdown", "metric_rows", "write_benchmark_tables"]

SCORE_COLUMNS = ("mIoU", "oIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
ROW_KEYS = ("test_set", "group", "N", *SCORE_COLUMNS)


def metric_rows(test_set: str, metrics: Mapping[str, float]) -> list[dict]:
    """One row per reported group of a flat metric dict (``mIoU``, ``rrsisd/mIoU``, ...).

    Keys without a group (``mIoU``) form the group ``all``; ``<group>/<score>`` keys form
    ``<group>``. Rows come in first-seen order; scores not reported stay empty.
    """
    rows: dict[str, dict] = {}
    for key, value in metrics.items():
        group, _, score = key.rpartition("/")
        if score not in (*SCORE_COLUMNS, "N") and not score.startswith("Pr@"):
            continue
        row = rows.setdefault(group or "all", {"test_set": test_set, "group": group or "all"})
        row[score] = value
    return list(rows.values())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def _columns(rows: Sequence[dict]) -> list[str]:
    extra = sorted({k for row in rows for k in row if k.startswith("Pr@")} - set(SCORE_COLUMNS))
    columns = [*ROW_KEYS, *extra]
    return [c for c in columns if c not in ("test_set",) or any(row.get(c) for row in rows)]


def format_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table of ``rows`` (scores with two decimals)."""
    columns = _columns(rows)
    header = ["test set" if c == "test_set" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_benchmark_tables(
    results: Sequence[Mapping],
    out_dir: str,
    stem: str = "benchmark",
    meta: Mapping | None = None,
) -> dict[str, str]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``out_dir``.

    Args:
        results: one entry per evaluated test set: ``{'name': str, 'metrics': {key: value}}``.
        meta: facts recorded next to the numbers (config, checkpoint and its SHA-256, date, ...).

    Returns:
        ``{'markdown': path, 'csv': path, 'json': path, 'table': markdown text}``.
    """
    rows = [row for entry in results for row in metric_rows(entry["name"], entry["metrics"])]
    if not rows:
        raise ValueError("no metric rows to write: the results hold no mIoU/oIoU/Pr@ keys")
    os.makedirs(out_dir, exist_ok=True)
    table = format_markdown(rows)
    header = [f"# {stem}", ""]
    header += [f"- {key}: {value}" for key, value in (meta or {}).items()]
    markdown = "\n".join([*header, "", table, ""]) if meta else "\n".join([*header, table, ""])
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = {
        "markdown": osp.join(out_dir, f"{stem}.md"),
        "csv": osp.join(out_dir, f"{stem}.csv"),
        "json": osp.join(out_dir, f"{stem}.json"),
    }
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["csv"], buffer.getvalue())
    payload = {"meta": dict(meta or {}), "rows": rows, "results": [dict(r) for r in results]}
    atomic_write_text(paths["json"], json.dumps(_json_safe(payload), indent=2, default=str) + "\n")
    return {**paths, "table": table}
