"""Every documented retry/stop rule of the request path, with the exact outcome recorded.

docs/llm.md: 429, 5xx, timeouts and dropped connections are retried (capped exponential backoff
with full jitter, honouring Retry-After) up to ``queue.max_transport_retries``; other 4xx end the
target; 401/403/404 stop the run; ``abort_after_failures`` targets in a row lost to transport
errors stop it too. A failed target writes nothing to the XML.
"""

from __future__ import annotations

import random

import httpx2 as httpx
import openai
import pytest
from llm_fixtures import make_config

from aerialseg.datasets.aerial_d_format import read_patch_xml
from llm.backend import FatalBackendError, backoff_delay, classify_error
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.targets import discover_annotations

QUIET = RunOptions(progress=False)
WATER = [f"train/annotations/P000{i}_patch_000000#group/1000001" for i in range(3)]


def _scripted(category: str, replies: list[Reply]):
    """``replies[seen]`` for targets of ``category``; well-formed answers for the others."""

    def respond(body, seen):
        if prompt_fields(body)[0] == category and seen < len(replies):
            return replies[seen]
        return well_formed_reply(body, seen)

    return respond


def _water_requests(server: LoopbackServer) -> int:
    return sum(prompt_fields(body)[0] == "water" for body in server.requests)


def _water_expressions(root) -> list[list[str]]:
    kinds = []
    for path in sorted((root / "train" / "annotations").glob("*.xml")):
        group = next(g for g in read_patch_xml(path).groups if g.category == "water")
        kinds.append([e.kind for e in group.expressions])
    return kinds


def _status_error(status: int, headers: dict | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://server/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request, json={})
    return openai.APIStatusError("error", response=response, body={})


@pytest.mark.parametrize(
    ("status", "reason", "retryable"),
    [
        (400, "http_400", False),
        (413, "http_413", False),
        (422, "http_422", False),
        (408, "http_408", True),
        (409, "http_409", True),
        (429, "rate_limited", True),
        (500, "server_error", True),
        (503, "server_error", True),
    ],
)
def test_status_codes_are_classified(status, reason, retryable):
    assert classify_error(_status_error(status)) == (reason, retryable)


def test_transport_errors_are_retryable():
    request = httpx.Request("POST", "http://server/v1/chat/completions")
    assert classify_error(openai.APITimeoutError(request)) == ("timeout", True)
    assert classify_error(openai.APIConnectionError(request=request)) == ("connection_error", True)
    with pytest.raises(KeyError):  # not an API error: raised again, never swallowed
        classify_error(KeyError("x"))


def test_backoff_is_full_jitter_capped_exponential():
    for retry, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 3.0), (30, 3.0)]:
        ours, referee = random.Random(retry), random.Random(retry)
        assert backoff_delay(retry, 0.5, 3.0, ours) == referee.uniform(0.0, cap)


@pytest.mark.parametrize("status", [400, 422])
def test_a_client_error_ends_the_target_after_one_request(dataset, status):
    with LoopbackServer(_scripted("water", [Reply(status=status)] * 5)) as server:
        config = make_config(server.base_url, queue={"max_transport_retries": 4})
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert _water_requests(server) == 3  # one per water target: never retried
    assert (summary.ok, summary.failed) == (9, 3)
    assert summary.failure_reasons == {f"http_{status}": 3}
    ledger = Ledger(dataset / "work" / "ledger.jsonl").latest()
    for uid in WATER:
        record = ledger[uid]
        assert record["status"] == "failed" and record["reason"] == f"http_{status}"
        (attempt,) = record["attempts"]
        assert (attempt["sample"], attempt["error"]) == (0, f"http_{status}")
        # Where transport errors are tallied per attempt, there is exactly one.
        assert attempt.get("transport_errors", {f"http_{status}": 1}) == {f"http_{status}": 1}
        assert record["detail"].startswith(f"http_{status} after 0 retries: ")
    assert _water_expressions(dataset) == [["original"]] * 3  # nothing written for them


def test_server_errors_are_retried_exactly_max_transport_retries_times(dataset):
    with LoopbackServer(_scripted("water", [Reply(status=502)] * 10)) as server:
        config = make_config(server.base_url, queue={"max_transport_retries": 2})
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert _water_requests(server) == 3 * 3  # first try + 2 retries, per target
    assert summary.failure_reasons == {"server_error": 3}
    record = Ledger(dataset / "work" / "ledger.jsonl").latest()[WATER[0]]
    assert record["detail"].startswith("server_error after 2 retries: ")


def test_rate_limit_then_answer_succeeds_with_one_answer_cached(dataset):
    replies = [Reply(status=429, headers={"retry-after": "0"}), Reply(status=500)]
    with LoopbackServer(_scripted("water", replies)) as server:
        config = make_config(server.base_url, queue={"max_transport_retries": 2})
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert _water_requests(server) == 9
    assert (summary.ok, summary.failed, summary.requests_sent) == (12, 0, 12)
    assert _water_expressions(dataset) == [["original", "enhanced", "unique", "unique"]] * 3


@pytest.mark.parametrize("status", [403, 404])
def test_refusals_that_hit_every_request_stop_the_run(dataset, status):
    with (
        LoopbackServer(lambda body, seen: Reply(status=status)) as server,
        pytest.raises(FatalBackendError, match=f"HTTP {status} for model 'teacher'"),
    ):
        enhance(make_config(server.base_url), discover_annotations(dataset), dataset / "w", QUIET)
    assert not (dataset / "w" / "ledger.jsonl").exists()


def test_a_dead_server_stops_the_run_after_abort_after_failures_targets(dataset):
    with LoopbackServer(lambda body, seen: Reply(status=503)) as server:
        config = make_config(
            server.base_url,
            queue={"concurrency": 1, "max_transport_retries": 0, "abort_after_failures": 2},
        )
        with pytest.raises(FatalBackendError, match="2 targets in a row were lost"):
            enhance(config, discover_annotations(dataset), dataset / "w", QUIET)
        assert len(server.requests) == 2
    ledger = Ledger(dataset / "w" / "ledger.jsonl").latest()
    assert [r["reason"] for r in ledger.values()] == ["server_error"]  # the 2nd one aborted
