"""The Batch API path (prepare, submit, status, collect) through the SDK, and ``llm report``."""

from __future__ import annotations

import json

import pytest
from llm_fixtures import make_config

from llm.backend import make_client
from llm.batch import BatchJob
from llm.cli import main
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.report import build_report
from llm.targets import discover_annotations


def test_batch_round_trip_merges_answers_and_prices_them_with_the_discount(dataset, capsys):
    def respond(body, seen):
        if prompt_fields(body)[0] == "water" and seen == 0:
            return Reply("the water is blue")  # invalid: recorded, re-sampled online later
        return well_formed_reply(body, seen)

    with LoopbackServer(respond, batch_polls=1) as server:
        config = make_config(
            server.base_url,
            pricing={"input_per_million": 2.0, "output_per_million": 8.0, "batch_discount": 0.5},
        )
        job = BatchJob(config, dataset / "work")
        files = discover_annotations(dataset)
        prepared = job.prepare(files, max_requests=5)
        assert (prepared.requests, prepared.parts) == (12, 3)
        lines = [
            json.loads(line)
            for part in sorted((dataset / "work" / "batch").glob("input-*.jsonl"))
            for line in part.read_text().splitlines()
        ]
        assert {line["url"] for line in lines} == {"/v1/chat/completions"}
        assert len({line["custom_id"] for line in lines}) == 12
        assert job.prepare(files).requests == 0  # already in a live part: nothing twice

        client = make_client(config.backend)
        assert [p["status"] for p in job.submit(client)] == ["validating"] * 3
        assert job.submit(client) == []
        assert {p["status"] for p in job.status(client)} == {"in_progress"}
        counts, summary = job.collect(files, client)
        assert counts == {"stored": 12, "errors": 0, "missing": 0, "parts_collected": 3}
        assert (summary.ok, summary.failed, summary.requests_sent) == (9, 3, 0)
        assert summary.failure_reasons == {"invalid_json": 3}
        record = Ledger(dataset / "work" / "ledger.jsonl").latest()[
            "train/annotations/P0000_patch_000000#group/1000001"
        ]
        assert "offline" in record["detail"] and record["attempts"][0]["origin"] == "batch"
        batch_requests = len(server.requests)

        # The online run re-samples only the three invalid answers.
        online = enhance(config, files, dataset / "work", RunOptions(progress=False))
        assert (online.ok, online.requests_sent, online.already_done) == (3, 3, 9)
        assert len(server.requests) == batch_requests + 3

    report = build_report(dataset / "work", config.pricing)
    assert (report["targets"], report["ok"], report["failed"]) == (12, 12, 0)
    assert report["invalid_samples"] == {"invalid_json": 3}
    assert report["valid_first_sample"] == 9
    assert report["by_kind"]["semantic"] == {"ok": 3}
    usage = report["usage"]
    assert usage["batch"]["responses"] == 12 and usage["api"]["responses"] == 3
    expected = sum(
        (u["prompt_tokens"] * 2.0 + u["completion_tokens"] * 8.0) / 1e6 * share
        for u, share in ((usage["api"], 1.0), (usage["batch"], 0.5))
    )
    assert report["cost_usd"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert report["batch_errors"] == {} and report["possibly_billed_timeouts"] == 0

    assert main(["report", "--work-dir", str(dataset / "work")]) == 0
    text = capsys.readouterr().out
    assert "targets: 12  ok: 12  failed: 0" in text and "invalid_json" in text


def test_report_counts_failure_reasons(dataset):
    always_truncated = lambda body, seen: Reply("{", finish_reason="length")  # noqa: E731
    with LoopbackServer(always_truncated) as server:
        config = make_config(server.base_url, queue={"max_resamples": 0})
        enhance(config, discover_annotations(dataset), dataset / "work", RunOptions(progress=False))
    report = build_report(dataset / "work")
    assert (report["ok"], report["failed"]) == (0, 12)
    assert report["failure_reasons"] == {"truncated": 12}
    assert report["cost_usd"] is None  # no price table: unknown, never $0
    with pytest.raises(FileNotFoundError, match="no ledger"):
        build_report(dataset / "elsewhere")


def test_batch_cli_steps(dataset, capsys):
    with LoopbackServer(batch_polls=0) as server:
        config_path = dataset / "config.json"
        config_path.write_text(make_config(server.base_url).model_dump_json())
        common = ["--config", str(config_path), "--work-dir", str(dataset / "work")]
        data = ["--annotations", str(dataset)]
        assert main(["batch", "prepare", *common, *data, "--sample", "5"]) == 0
        assert json.loads(capsys.readouterr().out)["requests"] == 5
        assert main(["batch", "submit", *common]) == 0
        assert main(["batch", "status", *common]) == 0
        assert "input-0000.jsonl: in_progress" in capsys.readouterr().out
        assert main(["batch", "collect", *common, *data]) == 0
        result = json.loads(capsys.readouterr().out)
    assert result["collected"]["stored"] == 5 and result["merge"]["ok"] == 5
    assert result["merge"]["not_collected"] == 7  # outside the sample: left for later
