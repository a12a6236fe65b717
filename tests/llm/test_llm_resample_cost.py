"""Re-runs ask invalid targets again (new samples, within a budget); cost counts what was paid."""

from __future__ import annotations

import pytest
from llm_fixtures import make_config
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion

from llm.cache import ResponseCache
from llm.cli import main
from llm.config import ConfigError, EnhanceConfig, PricingConfig, load_enhance_config, parse_config
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.report import build_report, format_report
from llm.targets import discover_annotations

QUIET = RunOptions(progress=False)
WATER = "train/annotations/P0000_patch_000000#group/1000001"


def invalid_first(times: int):
    """Water answers are invalid JSON for the first ``times`` requests of each water target."""

    def respond(body, seen):
        if prompt_fields(body)[0] == "water" and seen < times:
            return Reply("{not json")
        return well_formed_reply(body, seen)

    return respond


def water_seeds(server: LoopbackServer, start: int = 0) -> list[int]:
    return sorted(r["seed"] for r in server.requests[start:] if prompt_fields(r)[0] == "water")


def test_a_rerun_asks_for_new_samples_until_the_budget(dataset):
    work, files = dataset / "work", discover_annotations(dataset)
    with LoopbackServer(invalid_first(4)) as server:
        config = make_config(server.base_url, queue={"max_resamples": 1, "sample_budget": 5})
        runs = []
        for _ in range(4):
            start = len(server.requests)
            summary = enhance(config, files, work, QUIET)
            runs.append((summary.ok, summary.failed, water_seeds(server, start)))
    # Each run re-validates the cached samples for free and asks for the next seeds, never the
    # cached invalid answer again: 2 new samples per run and target, 5 in all.
    assert runs == [
        (9, 3, [0, 0, 0, 1, 1, 1]),
        (0, 3, [2, 2, 2, 3, 3, 3]),
        (3, 0, [4, 4, 4]),
        (0, 0, []),
    ]
    record = Ledger(work / "ledger.jsonl").latest()[WATER]
    assert record["status"] == "ok"
    assert [(a["sample"], a["cached"], a.get("reason")) for a in record["attempts"]] == [
        (0, True, "invalid_json"),
        (1, True, "invalid_json"),
        (2, True, "invalid_json"),
        (3, True, "invalid_json"),
        (4, False, None),
    ]

    with LoopbackServer(invalid_first(99)) as server:
        config = make_config(server.base_url, queue={"max_resamples": 1, "sample_budget": 3})
        first = enhance(config, files, dataset / "w2", RunOptions(redo=True, progress=False))
        second = enhance(config, files, dataset / "w2", RunOptions(redo=True, progress=False))
        third = enhance(config, files, dataset / "w2", RunOptions(redo=True, progress=False))
        assert water_seeds(server) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (first.failed, second.failed, third.failed, third.requests_sent) == (3, 3, 3, 0)
    failed = Ledger(dataset / "w2" / "ledger.jsonl").latest()[WATER]
    assert "all 3 samples of queue.sample_budget were invalid" in failed["detail"]


def test_resampling_without_a_seed_still_asks_again(dataset):
    with LoopbackServer(invalid_first(1)) as server:
        config = make_config(server.base_url, sampling={"seed": None})
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        water = [r for r in server.requests if prompt_fields(r)[0] == "water"]
    assert (summary.ok, summary.failed) == (12, 0)
    assert len(water) == 6 and all("seed" not in r for r in water)


def completion(prompt: int, cached: int, completion_tokens: int) -> dict:
    """A chat completion as the SDK models it, with the usage fields OpenAI bills by."""
    return ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=0,
        model="o3",
        choices=[
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "{}"},
            }
        ],
        usage=CompletionUsage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            total_tokens=prompt + completion_tokens,
            prompt_tokens_details={"cached_tokens": cached},
            completion_tokens_details={"reasoning_tokens": completion_tokens // 2},
        ),
    ).model_dump(mode="json")


def test_cached_input_tokens_are_priced_at_their_rate(tmp_path):
    cache = ResponseCache(tmp_path / "cache")
    cache.put("a" * 64, completion(prompt=1000, cached=600, completion_tokens=200), "api")
    cache.put("b" * 64, completion(prompt=1000, cached=0, completion_tokens=100), "batch")
    Ledger(tmp_path / "ledger.jsonl").append({"uid": "u", "status": "ok", "attempts": [{}]})
    pricing = PricingConfig(
        input_per_million=2.0,
        cached_input_per_million=0.5,
        output_per_million=8.0,
        batch_discount=0.5,
    )
    report = build_report(tmp_path, pricing)
    assert report["usage"]["api"]["cached_prompt_tokens"] == 600
    # api: 400 x $2 + 600 x $0.5 + 200 x $8; batch: (1000 x $2 + 100 x $8) x 50%, per million
    assert report["cost_usd"] == pytest.approx(0.0027 + 0.0014)
    full_price = build_report(
        tmp_path, pricing.model_copy(update={"cached_input_per_million": None})
    )
    assert full_price["cost_usd"] == pytest.approx(0.0036 + 0.0014)  # no cached rate: input price
    assert "cached input at $0.5/M" in format_report(report)

    unknown = build_report(tmp_path)
    assert unknown["cost_usd"] is None and unknown["cost_per_response_usd"] is None
    assert "cost: unknown" in format_report(unknown) and "$0.0000" not in format_report(unknown)
    assert load_enhance_config("vllm_gemma3").pricing is None  # a local GPU has no list price
    with pytest.raises(ConfigError, match="pricing.output_per_million"):
        parse_config(
            EnhanceConfig, {"backend": {"model": "m"}, "pricing": {"input_per_million": 2}}
        )


# A well-formed reply must arrive well within the client timeout even on a loaded 2-core machine,
# or it would be counted as a timeout too; a slow reply is far beyond it.
CLIENT_TIMEOUT_S, SLOW_REPLY_S = 1.0, 3.0


def test_client_side_timeouts_are_counted_as_possibly_billed(dataset, capsys):
    slow_water = lambda body, seen: (  # noqa: E731
        Reply(delay_s=SLOW_REPLY_S)
        if prompt_fields(body)[0] == "water" and seen == 0
        else well_formed_reply(body, seen)
    )
    pricing = {"input_per_million": 2.0, "output_per_million": 8.0}
    with LoopbackServer(slow_water) as server:
        config = make_config(
            server.base_url, backend={"timeout_s": CLIENT_TIMEOUT_S}, pricing=pricing
        )
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        received = len(server.requests)
    assert (summary.ok, summary.failed) == (12, 0)
    report = build_report(dataset / "work", config.pricing)
    # What the server processed = answers paid + requests the client gave up on.
    assert report["responses_paid"] + report["possibly_billed_timeouts"] == received == 15
    assert report["transport_errors"] == {"timeout": 3}
    mean = report["cost_usd"] / report["responses_paid"]
    assert report["possibly_billed_timeouts_usd"] == pytest.approx(3 * mean, rel=1e-3)
    record = Ledger(dataset / "work" / "ledger.jsonl").latest()[WATER]
    assert record["attempts"][0]["transport_errors"] == {"timeout": 1}

    always_slow = lambda body, seen: (  # noqa: E731
        Reply(delay_s=SLOW_REPLY_S)
        if prompt_fields(body)[0] == "water"
        else well_formed_reply(body, seen)
    )
    with LoopbackServer(always_slow) as server:
        given_up = make_config(
            server.base_url,
            backend={"timeout_s": CLIENT_TIMEOUT_S},
            queue={"max_transport_retries": 1},
        )
        options = RunOptions(redo=True, progress=False)
        summary = enhance(given_up, discover_annotations(dataset), dataset / "w2", options)
        received = len(server.requests)
    assert (summary.failed, summary.failure_reasons) == (3, {"timeout": 3})
    lost = build_report(dataset / "w2")
    assert lost["responses_paid"] + lost["possibly_billed_timeouts"] == received == 9 + 6

    config_path = dataset / "config.json"
    config_path.write_text(config.model_dump_json())
    assert main(["report", "--work-dir", str(dataset / "work"), "--config", str(config_path)]) == 0
    assert "possibly billed: 3 requests timed out" in capsys.readouterr().out
