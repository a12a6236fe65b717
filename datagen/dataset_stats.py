"""Dataset statistics (per split, per class, per expression type, per feature set) as Markdown.

Computed from the expression records the export writes, so the tables describe exactly the files
on disk (the original's published numbers came from separate scripts).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from datagen.classes import CLASSES, class_by_key

__all__ = ["collect_statistics", "statistics_markdown"]

FEATURE_ORDER = ("category", "position", "extreme", "size", "color", "relationship")


def _target_type(target: dict) -> str:
    if target["kind"] == "instance":
        return "instance"
    return "semantic" if target["kind"] in ("class", "region") else "group"


def collect_statistics(records) -> dict:
    """Counts over expression records (``split`` and ``targets`` with ``expressions``)."""
    splits: dict[str, Counter] = defaultdict(Counter)
    categories: dict[str, Counter] = defaultdict(Counter)
    types: dict[str, Counter] = defaultdict(Counter)
    taxonomy: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        split = record["split"]
        split_counts = splits[split]
        split_counts["patches"] += 1
        split_counts[f"patches_{record['source']}"] += 1
        for key in ("candidates", "unique"):
            split_counts[key] += record.get("counts", {}).get(key, 0)
        for target in record["targets"]:
            count = len(target["expressions"])
            family = "objects" if target["kind"] == "instance" else "groups"
            split_counts[family] += 1
            split_counts[f"{family}_expressions"] += count
            category = categories[target["category"]]
            category[family] += 1
            category[f"{family}_expressions"] += count
            types[split][_target_type(target)] += count
            for expression in target["expressions"]:
                types[split][expression.get("type") or "original"] += 1
                features = [f for f in FEATURE_ORDER if f in expression.get("features", ())]
                taxonomy[" + ".join(features) or "category"][family] += 1
    return {
        "splits": {k: dict(v) for k, v in sorted(splits.items())},
        "categories": {k: dict(v) for k, v in categories.items()},
        "expression_types": {k: dict(v) for k, v in sorted(types.items())},
        "taxonomy": {k: dict(v) for k, v in sorted(taxonomy.items())},
    }


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |"
        )
    return lines


def statistics_markdown(stats: dict, historic_variants: int = 0) -> str:
    """The statistics as Markdown tables."""
    splits = list(stats["splits"])
    total = Counter()
    for counts in stats["splits"].values():
        total.update(counts)
    columns = [*splits, "total"]
    per = [stats["splits"][s] for s in splits] + [total]

    def average(counts, family):
        return (
            f"{counts.get(f'{family}_expressions', 0) / counts[family]:.2f}"
            if counts.get(family)
            else "-"
        )

    lines = ["# Aerial-D statistics", "", "## Splits", ""]
    overview = [
        ("Patches", "patches"),
        ("  from iSAID", "patches_isaid"),
        ("  from LoveDA", "patches_loveda"),
        ("Objects with expressions", "objects"),
        ("Object expressions", "objects_expressions"),
        ("Groups with expressions", "groups"),
        ("Group expressions", "groups_expressions"),
    ]
    rows = [[label, *[c.get(key, 0) for c in per]] for label, key in overview]
    rows.append(["Targets", *[c.get("objects", 0) + c.get("groups", 0) for c in per]])
    rows.append(
        [
            "Expressions",
            *[c.get("objects_expressions", 0) + c.get("groups_expressions", 0) for c in per],
        ]
    )
    rows.append(["Avg expressions / object", *[average(c, "objects") for c in per]])
    rows.append(["Avg expressions / group", *[average(c, "groups") for c in per]])
    rows.append(["Rule candidates checked", *[c.get("candidates", 0) for c in per]])
    rows.append(["Candidates unique", *[c.get("unique", 0) for c in per]])
    lines += _table(["Metric", *columns], rows)
    if historic_variants:
        lines += ["", f"Historic variants exported as extra patches: {historic_variants:,}."]

    lines += ["", "## Expressions by type", ""]
    kinds = ["original", "enhanced", "unique", "instance", "group", "semantic"]
    type_total = Counter()
    for counts in stats["expression_types"].values():
        type_total.update(counts)
    type_per = [stats["expression_types"].get(s, {}) for s in splits] + [type_total]
    labels = {
        "original": "Rule-based (original)",
        "enhanced": "LLM paraphrase (enhanced)",
        "unique": "LLM visual (unique)",
        "instance": "On instances",
        "group": "On groups",
        "semantic": "On semantic regions / class-wide groups",
    }
    lines += _table(
        ["Type", *columns], [[labels[k], *[c.get(k, 0) for c in type_per]] for k in kinds]
    )

    lines += ["", "## Categories", ""]
    rows = []
    for info in CLASSES:
        counts = stats["categories"].get(info.key)
        if not counts:
            continue
        rows.append(
            [
                info.name,
                counts.get("objects", 0),
                counts.get("groups", 0),
                counts.get("objects_expressions", 0),
                counts.get("groups_expressions", 0),
                class_by_key(info.key).source,
            ]
        )
    lines += _table(
        ["Category", "Objects", "Groups", "Object expressions", "Group expressions", "Source"], rows
    )

    lines += ["", "## Rule features", ""]
    rows = [
        [name, counts.get("objects", 0), counts.get("groups", 0)]
        for name, counts in sorted(
            stats["taxonomy"].items(), key=lambda kv: (kv[0].count("+"), kv[0])
        )
    ]
    lines += _table(["Features", "Object expressions", "Group expressions"], rows)
    return "\n".join(lines) + "\n"
