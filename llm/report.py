"""``llm report``: target counts, failure reasons, token usage and the cost of a work dir.

- Counts come from the ledger (last record per target); batch lines that got no answer are failed
  targets with a ``batch_*`` reason there, and ``batch_errors`` counts every such line of every
  collected part (``batch/state.json``), including lines answered later.
- Cost comes from the response cache: every entry is an answer that was paid for exactly once,
  whether it was used or re-used later. Per answer: uncached prompt tokens × input price + cached
  prompt tokens (``prompt_tokens_details.cached_tokens``) × cached-input price + completion tokens
  (reasoning included) × output price; answers collected from the Batch API get
  ``pricing.batch_discount``.
- Requests that timed out on the client may have been processed, and billed, by the server; their
  tokens are unknown. They are counted apart (``possibly_billed_timeouts``, from every ledger
  record of every run) with an estimate at the mean cost of an answered request.
- Without a price table the cost is ``None`` ("unknown"), never $0.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from llm.batch_state import load_batch_state
from llm.cache import ResponseCache
from llm.config import PricingConfig
from llm.ledger import Ledger

ORIGINS = ("api", "batch")


def _usage_by_origin(work_dir: Path) -> dict[str, Counter]:
    usage = {origin: Counter() for origin in ORIGINS}
    for entry in ResponseCache(work_dir / "cache").entries():
        response = entry.get("response") or {}
        tokens = response.get("usage") or {}
        counter = usage.setdefault(entry.get("origin", "api"), Counter())
        counter["responses"] += 1
        counter["prompt_tokens"] += int(tokens.get("prompt_tokens") or 0)
        prompt_details = tokens.get("prompt_tokens_details") or {}
        counter["cached_prompt_tokens"] += int(prompt_details.get("cached_tokens") or 0)
        counter["completion_tokens"] += int(tokens.get("completion_tokens") or 0)
        details = tokens.get("completion_tokens_details") or {}
        counter["reasoning_tokens"] += int(details.get("reasoning_tokens") or 0)
    return usage


def usage_cost(counter: Counter | dict, pricing: PricingConfig, origin: str) -> float:
    """USD for the token counts of one origin (``api`` or ``batch``)."""
    cached = counter.get("cached_prompt_tokens", 0)
    cached_price = (
        pricing.input_per_million
        if pricing.cached_input_per_million is None
        else pricing.cached_input_per_million
    )
    price = (
        (counter.get("prompt_tokens", 0) - cached) * pricing.input_per_million
        + cached * cached_price
        + counter.get("completion_tokens", 0) * pricing.output_per_million
    ) / 1e6
    return price * (1 - pricing.batch_discount) if origin == "batch" else price


def _batch_errors(work_dir: Path) -> Counter:
    state = load_batch_state(work_dir)
    return Counter(
        reason for part in state["parts"] for reason in (part.get("failures") or {}).values()
    )


def build_report(work_dir: str | Path, pricing: PricingConfig | None = None) -> dict[str, Any]:
    work_dir = Path(work_dir)
    ledger_path = work_dir / "ledger.jsonl"
    if not ledger_path.is_file():
        raise FileNotFoundError(f"{ledger_path}: no ledger; run `llm enhance` first")
    ledger = Ledger(ledger_path)
    latest = ledger.latest()
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
    # Every record of every run: each request's errors are in the record of its run only. An
    # attempt holds the errors retried before its answer, or before its own final `error`.
    transport_errors: Counter = Counter()
    for record in ledger.records():
        for attempt in record.get("attempts", []):
            transport_errors.update(attempt.get("transport_errors") or {})
            if "error" in attempt and attempt.get("origin") != "batch":
                transport_errors[attempt["error"]] += 1
    usage = _usage_by_origin(work_dir)
    responses = sum(counter["responses"] for counter in usage.values())
    timeouts = transport_errors["timeout"]
    cost = per_response = timeouts_cost = None
    if pricing is not None:
        cost = sum(usage_cost(counter, pricing, origin) for origin, counter in usage.items())
        per_response = cost / responses if responses else None
        api = usage["api"]
        if timeouts == 0:
            timeouts_cost = 0.0
        elif api["responses"]:
            timeouts_cost = timeouts * usage_cost(api, pricing, "api") / api["responses"]
    return {
        "targets": len(latest),
        "ok": status["ok"],
        "failed": status["failed"],
        "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "failure_reasons": dict(failures.most_common()),
        "valid_first_sample": sum(1 for r in ok if len(r["attempts"]) == 1),
        "invalid_samples": dict(invalid_samples.most_common()),
        "batch_errors": dict(_batch_errors(work_dir).most_common()),
        "transport_errors": dict(transport_errors.most_common()),
        "usage": {origin: dict(counter) for origin, counter in usage.items()},
        "responses_paid": responses,
        "possibly_billed_timeouts": timeouts,
        "cost_usd": None if cost is None else round(cost, 6),
        "cost_per_response_usd": None if per_response is None else round(per_response, 8),
        "possibly_billed_timeouts_usd": None if timeouts_cost is None else round(timeouts_cost, 6),
        "pricing": None if pricing is None else pricing.model_dump(),
    }


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"targets: {report['targets']}  ok: {report['ok']}  failed: {report['failed']}  "
        f"valid at first sample: {report['valid_first_sample']}",
    ]
    for kind, counts in report["by_kind"].items():
        lines.append(f"  {kind:<9} " + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    sections = (
        ("failure reasons (final):", "failure_reasons"),
        ("invalid samples (all attempts, incl. re-sampled ones):", "invalid_samples"),
        ("batch lines without an answer (all collected parts):", "batch_errors"),
        ("transport errors (all runs, incl. retried ones):", "transport_errors"),
    )
    for title, key in sections:
        if report[key]:
            lines.append(title)
            lines += [f"  {reason:<24} {n}" for reason, n in report[key].items()]
    for origin, counter in report["usage"].items():
        if counter.get("responses"):
            lines.append(
                f"{origin} responses: {counter['responses']}  prompt tokens: "
                f"{counter['prompt_tokens']} (cached {counter['cached_prompt_tokens']})  "
                f"completion tokens: {counter['completion_tokens']} "
                f"(reasoning {counter['reasoning_tokens']})"
            )
    pricing = report["pricing"]
    if pricing is None:
        lines.append(
            "cost: unknown (no price table: pass --config with a `pricing` section; a "
            "self-hosted server needs your own per-token cost)"
        )
    else:
        cached = pricing["cached_input_per_million"]
        cached_text = "input price" if cached is None else f"${cached}/M"
        per_response = report["cost_per_response_usd"]
        lines.append(
            f"cost: {_usd(report['cost_usd'])} for {report['responses_paid']} answers ("
            + ("" if per_response is None else f"${per_response:.6f} per answer; ")
            + f"${pricing['input_per_million']}/M input, cached input at {cached_text}, "
            f"${pricing['output_per_million']}/M output, batch discount "
            f"{pricing['batch_discount']:.0%})"
        )
    if report["possibly_billed_timeouts"]:
        lines.append(
            f"possibly billed: {report['possibly_billed_timeouts']} requests timed out on the "
            f"client (tokens unknown; about {_usd(report['possibly_billed_timeouts_usd'])} at the "
            "mean cost of an answered request), not in the cost above"
        )
    return "\n".join(lines)
