"""``llm report``: target counts, failure reasons, token usage and a cost estimate for a work dir.

Counts come from the ledger (last record per target). Cost comes from the response cache: every
entry is an answer that was paid for exactly once, whether it was used or re-used later, so
``Σ prompt_tokens × input price + Σ completion_tokens × output price`` (reasoning tokens are part of
completion tokens) is what the run cost; answers collected from the Batch API get
``pricing.batch_discount``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from llm.cache import ResponseCache
from llm.config import PricingConfig
from llm.ledger import Ledger


def build_report(work_dir: str | Path, pricing: PricingConfig | None = None) -> dict[str, Any]:
    work_dir = Path(work_dir)
    ledger_path = work_dir / "ledger.jsonl"
    if not ledger_path.is_file():
        raise FileNotFoundError(f"{ledger_path}: no ledger; run `llm enhance` first")
    pricing = pricing or PricingConfig()
    latest = Ledger(ledger_path).latest()
    status = Counter(record["status"] for record in latest.values())
    failures = Counter(r["reason"] for r in latest.values() if r["status"] == "failed")
    by_kind: dict[str, Counter] = {}
    for record in latest.values():
        by_kind.setdefault(record.get("kind", "unknown"), Counter())[record["status"]] += 1
    ok = [r for r in latest.values() if r["status"] == "ok"]
    invalid_samples = Counter(
        attempt["reason"]
        for record in latest.values()
        for attempt in record.get("attempts", [])
        if "reason" in attempt
    )
    usage = {origin: Counter() for origin in ("api", "batch")}
    for entry in ResponseCache(work_dir / "cache").entries():
        response = entry.get("response") or {}
        tokens = response.get("usage") or {}
        counter = usage.setdefault(entry.get("origin", "api"), Counter())
        counter["responses"] += 1
        counter["prompt_tokens"] += int(tokens.get("prompt_tokens") or 0)
        counter["completion_tokens"] += int(tokens.get("completion_tokens") or 0)
        details = tokens.get("completion_tokens_details") or {}
        counter["reasoning_tokens"] += int(details.get("reasoning_tokens") or 0)
    cost = 0.0
    for origin, counter in usage.items():
        price = (
            counter["prompt_tokens"] * pricing.input_per_million
            + counter["completion_tokens"] * pricing.output_per_million
        ) / 1e6
        cost += price * (1 - pricing.batch_discount) if origin == "batch" else price
    responses = sum(counter["responses"] for counter in usage.values())
    return {
        "targets": len(latest),
        "ok": status["ok"],
        "failed": status["failed"],
        "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "failure_reasons": dict(failures.most_common()),
        "valid_first_sample": sum(1 for r in ok if len(r["attempts"]) == 1),
        "invalid_samples": dict(invalid_samples.most_common()),
        "usage": {origin: dict(counter) for origin, counter in usage.items()},
        "responses_paid": responses,
        "cost_usd": round(cost, 6),
        "cost_per_response_usd": round(cost / responses, 8) if responses else 0.0,
        "pricing": pricing.model_dump(),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"targets: {report['targets']}  ok: {report['ok']}  failed: {report['failed']}  "
        f"valid at first sample: {report['valid_first_sample']}",
    ]
    for kind, counts in report["by_kind"].items():
        lines.append(f"  {kind:<9} " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    if report["failure_reasons"]:
        lines.append("failure reasons (final):")
        lines += [f"  {reason:<24} {n}" for reason, n in report["failure_reasons"].items()]
    if report["invalid_samples"]:
        lines.append("invalid samples (all attempts, incl. re-sampled ones):")
        lines += [f"  {reason:<24} {n}" for reason, n in report["invalid_samples"].items()]
    for origin, counter in report["usage"].items():
        if counter.get("responses"):
            lines.append(
                f"{origin} responses: {counter['responses']}  prompt tokens: "
                f"{counter['prompt_tokens']}  completion tokens: {counter['completion_tokens']} "
                f"(reasoning {counter['reasoning_tokens']})"
            )
    pricing = report["pricing"]
    lines.append(
        f"estimated cost: ${report['cost_usd']:.4f} (${report['cost_per_response_usd']:.6f} per "
        f"response; ${pricing['input_per_million']}/M input, ${pricing['output_per_million']}/M "
        f"output, batch discount {pricing['batch_discount']:.0%})"
    )
    return "\n".join(lines)
