"""Benchmark tables (Markdown, CSV, JSON) from :class:`ReferringMetric` results, with provenance
and, for several runs (e.g. one checkpoint per seed), mean ± sample std rows."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import os.path as osp
from collections.abc import Mapping, Sequence

import numpy as np

from aerialformats.atomic import atomic_write_text

__all__ = [
    "PROVENANCE_COLUMNS",
    "aggregate_runs",
    "flatten",
    "format_markdown",
    "metric_rows",
    "write_benchmark_tables",
]

SCORE_COLUMNS = ("mIoU", "oIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9")
MEAN, STD = "mean", "std"
# Provenance fields repeated on every CSV row (dotted paths into a result's ``provenance``), so a
# row copied into a spreadsheet still says how it was computed. The JSON holds everything.
PROVENANCE_COLUMNS = (
    "protocol.name",
    "protocol.eval_size",
    "protocol.threshold_comparison",
    "protocol.empty_union",
    "datasets",
    "historic_filter",
    "checkpoint.sha256",
    "config.sha256",
    "git.commit",
    "git.dirty",
    "seed",
    "device",
    "dtype",
    "packages",
)


def metric_rows(test_set: str, metrics: Mapping[str, float], run: str = "") -> list[dict]:
    """One row per reported group of a flat metric dict (``mIoU``, ``rrsisd/mIoU``, ...).

    Keys without a group (``mIoU``) form the group ``all``; ``<group>/<score>`` keys form
    ``<group>``. Rows come in first-seen order; scores not reported stay empty. ``run`` labels
    the rows of one of several runs.
    """
    rows: dict[str, dict] = {}
    for key, value in metrics.items():
        group, _, score = key.rpartition("/")
        if score not in (*SCORE_COLUMNS, "N") and not score.startswith("Pr@"):
            continue
        row = rows.setdefault(
            group or "all", {"test_set": test_set, "run": run, "group": group or "all"}
        )
        row[score] = value
    return list(rows.values())


def _score_keys(rows: Sequence[dict]) -> list[str]:
    extra = sorted({k for row in rows for k in row if k.startswith("Pr@")} - set(SCORE_COLUMNS))
    return ["N", *SCORE_COLUMNS, *extra]


def aggregate_runs(rows: Sequence[dict]) -> list[dict]:
    """Mean and sample standard deviation over runs, per (test set, group) and score.

    The std is the **sample** standard deviation (``ddof=1``, Bessel's correction, as
    ``statistics.stdev``): runs are a sample of the seeds one could have trained with. A group is
    aggregated over the runs that report it (``runs`` says how many); a score missing or NaN in
    one of them makes its mean and std NaN, so a gap is never averaged away.

    Returns:
        ``[{'test_set', 'run': 'mean', 'group', 'runs', <score>: mean}, {... 'run': 'std' ...}]``
        in first-seen order; empty when there is only one run.
    """
    runs = list(dict.fromkeys(row["run"] for row in rows))
    if len(runs) < 2:
        return []
    scores = _score_keys(rows)
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["test_set"], row["group"]), []).append(row)
    aggregated = []
    for (test_set, group), members in grouped.items():
        mean_row = {"test_set": test_set, "run": MEAN, "group": group, "runs": len(members)}
        std_row = {"test_set": test_set, "run": STD, "group": group, "runs": len(members)}
        for score in scores:
            values = np.array(
                [float("nan") if m.get(score) is None else float(m[score]) for m in members]
            )
            if not any(score in m for m in members):
                continue
            mean_row[score] = float(values.mean())
            std_row[score] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        aggregated += [mean_row, std_row]
    return aggregated


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def _columns(rows: Sequence[dict]) -> list[str]:
    columns = ["test_set", "run", "group", *_score_keys(rows)]
    return [c for c in columns if c not in ("test_set", "run") or any(row.get(c) for row in rows)]


def format_markdown(rows: Sequence[dict], aggregated: Sequence[dict] = ()) -> str:
    """A Markdown table of ``rows`` (scores with two decimals), then one ``mean ± std`` row per
    (test set, group) of ``aggregated`` (see :func:`aggregate_runs`)."""
    columns = _columns(rows)
    header = ["test set" if c == "test_set" else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    means = [row for row in aggregated if row["run"] == MEAN]
    stds = [row for row in aggregated if row["run"] == STD]
    for mean_row, std_row in zip(means, stds):
        cells = []
        for column in columns:
            if column == "run":
                cells.append(f"mean ± std ({mean_row['runs']} runs)")
            elif column in ("test_set", "group"):
                cells.append(str(mean_row[column]))
            elif column == "N":
                count = mean_row.get("N")
                whole = isinstance(count, float) and count.is_integer()
                cells.append(str(int(count)) if whole else _cell(count))
            else:
                mean, std = _cell(mean_row.get(column)), _cell(std_row.get(column))
                cells.append(f"{mean} ± {std}" if mean and std else mean)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _compact(value) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(_json_safe(value), sort_keys=True, default=str, ensure_ascii=False)
    return "" if value is None else str(value)


def flatten(record: Mapping, prefix: str = "") -> dict[str, object]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists stay values."""
    flat: dict[str, object] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _lookup(record: Mapping, dotted: str):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _markdown_value(value) -> str:
    return "none" if value is None else _compact(value)


def _provenance_markdown(results: Sequence[Mapping]) -> list[str]:
    """One bullet list per run and test set; fields equal across all of them are listed once."""
    flats = [flatten(entry.get("provenance") or {}) for entry in results]
    if not any(flats):
        return []
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    shared = [k for k in keys if all(k in f and f[k] == flats[0].get(k) for f in flats)]
    lines = ["## Provenance"]
    lines += (
        [""] + [f"- {key}: {_markdown_value(flats[0][key])}" for key in shared] if shared else []
    )
    for entry, flat in zip(results, flats):
        own = [k for k in keys if k not in shared and k in flat]
        if not own:
            continue
        label = entry["name"] + (f" (run {entry['run']})" if entry.get("run") else "")
        lines += ["", f"### {label}", ""]
        lines += [f"- {key}: {_markdown_value(flat[key])}" for key in own]
    return [*lines, ""]


def write_benchmark_tables(
    results: Sequence[Mapping],
    out_dir: str,
    stem: str = "benchmark",
    meta: Mapping | None = None,
) -> dict[str, str]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.json`` into ``out_dir``.

    Args:
        results: one entry per evaluated (run, test set): ``{'name': str, 'metrics': {key:
            value}}`` plus optionally ``'run'`` (a label, when several checkpoints are compared)
            and ``'provenance'`` (how the numbers were made; see
            :func:`aerialseg.evaluation.provenance.run_provenance`). With two or more runs the
            tables get ``mean`` and ``std`` rows (:func:`aggregate_runs`).
        meta: facts about the whole file (date, command line, ...).

    Returns:
        ``{'markdown': path, 'csv': path, 'json': path, 'table': markdown table}``.
    """
    rows, row_sources = [], []
    for entry in results:
        for row in metric_rows(entry["name"], entry["metrics"], entry.get("run", "")):
            rows.append(row)
            row_sources.append(entry)
    if not rows:
        raise ValueError("no metric rows to write: the results hold no mIoU/oIoU/Pr@ keys")
    aggregated = aggregate_runs(rows)
    os.makedirs(out_dir, exist_ok=True)
    table = format_markdown(rows, aggregated)
    lines = [f"# {stem}", ""]
    lines += [f"- {key}: {_compact(value)}" for key, value in (meta or {}).items()]
    lines += [""] if meta else []
    # The numbers first, then how they were made.
    provenance = _provenance_markdown(results)
    markdown = "\n".join([*lines, table, *([""] + provenance if provenance else [""])])

    columns = [*_columns(rows), *(["runs"] if aggregated else [])]
    provenance_columns = (
        list(PROVENANCE_COLUMNS) if any(entry.get("provenance") for entry in results) else []
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=columns + provenance_columns, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row, entry in zip(rows, row_sources):
        provenance = entry.get("provenance") or {}
        extra = {key: _compact(_lookup(provenance, key)) for key in provenance_columns}
        writer.writerow({**row, **extra})
    writer.writerows(aggregated)
    paths = {
        "markdown": osp.join(out_dir, f"{stem}.md"),
        "csv": osp.join(out_dir, f"{stem}.csv"),
        "json": osp.join(out_dir, f"{stem}.json"),
    }
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_text(paths["csv"], buffer.getvalue())
    payload = {
        "meta": dict(meta or {}),
        "rows": rows,
        "aggregate": aggregated,
        "std": "sample standard deviation over runs (ddof=1)" if aggregated else None,
        "results": [dict(r) for r in results],
    }
    atomic_write_text(paths["json"], json.dumps(_json_safe(payload), indent=2, default=str) + "\n")
    return {**paths, "table": table}
