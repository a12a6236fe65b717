"""``llm enhance`` through the real openai SDK against a local OpenAI-protocol server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_fixtures import make_config

from aerialseg.datasets.aerial_d_format import read_patch_xml
from llm.backend import FatalBackendError, MissingApiKeyError
from llm.cache import request_key
from llm.cli import main
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.targets import discover_annotations

QUIET = RunOptions(progress=False)


def expressions_by_target(root: Path) -> dict[str, list]:
    result = {}
    for path in sorted(root.rglob("*.xml")):
        annotation = read_patch_xml(path)
        for kind, entities in (("object", annotation.objects), ("group", annotation.groups)):
            for entity in entities:
                result[f"{path.stem}#{kind}/{entity.id}"] = entity.expressions
        assert not list(path.parent.glob(".*.tmp")), "temp files left behind"
    return result


def responder_for(category: str, script: list[Reply]):
    """Reply with ``script[seen]`` for targets of ``category``, well-formed answers otherwise."""

    def respond(body, seen):
        if prompt_fields(body)[0] == category and seen < len(script):
            return script[seen]
        return well_formed_reply(body, seen)

    return respond


def test_success_writes_validated_expressions_with_provenance(dataset):
    with LoopbackServer() as server:
        config = make_config(server.base_url)
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert server.authorization == "Bearer sk-test-secret-value"
    assert (summary.ok, summary.failed, summary.requests_sent, summary.files_written) == (
        12,
        0,
        12,
        3,
    )
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0
    expressions = expressions_by_target(dataset)
    car = expressions["P0000_patch_000000#object/2"]
    assert [(e.kind, e.id, e.source_id) for e in car] == [
        ("original", "0", None),
        ("original", "1", None),
        ("enhanced", None, "0"),
        ("enhanced", None, "1"),
        ("unique", None, None),
        ("unique", None, None),
    ]
    assert car[2].text == "the small vehicle in the bottom right seen from above"
    for expression in car[2:]:
        assert expression.model == "teacher-loopback"  # the model the server says it ran
        assert expression.prompt_version.startswith("v1-")
        assert expression.time.endswith("+00:00")
    assert expressions["P0000_patch_000000#object/3"] == []  # no original, no request
    ledger = Ledger(dataset / "work" / "ledger.jsonl").latest()
    assert len(ledger) == 12 and {r["status"] for r in ledger.values()} == {"ok"}
    run = json.loads((dataset / "work" / "runs.jsonl").read_text().splitlines()[-1])
    assert run["summary"]["ok"] == 12


def test_missing_api_key_stops_before_any_work(dataset, monkeypatch, capsys):
    monkeypatch.delenv("LLM_TEST_KEY")
    with LoopbackServer() as server:
        config = make_config(server.base_url)
        with pytest.raises(MissingApiKeyError, match="LLM_TEST_KEY"):
            enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        config_path = dataset / "config.json"
        config_path.write_text(config.model_dump_json())
        args = ["enhance", "--config", str(config_path), "--annotations", str(dataset)]
        assert main([*args, "--work-dir", str(dataset / "work2")]) == 2
        assert server.requests == []
    assert "set the environment variable LLM_TEST_KEY" in capsys.readouterr().err
    assert not (dataset / "work").exists() and not (dataset / "work2").exists()


def test_invalid_json_is_resampled_and_schema_violations_end_as_recorded_failures(dataset):
    broken = json.dumps({"enhanced_expressions": [], "unique_description": "x"})
    respond_water = responder_for("water", [Reply("{not json")])
    with LoopbackServer(respond_water) as server:
        summary = enhance(
            make_config(server.base_url), discover_annotations(dataset), dataset / "w1", QUIET
        )
    assert (summary.ok, summary.failed) == (12, 0)
    record = Ledger(dataset / "w1" / "ledger.jsonl").latest()[
        "train/annotations/P0001_patch_000000#group/1000001"
    ]
    assert [a.get("reason") for a in record["attempts"]] == ["invalid_json", None]
    water_seeds = [r["seed"] for r in server.requests if prompt_fields(r)[0] == "water"]
    assert sorted(water_seeds) == [0, 0, 0, 1, 1, 1]  # the re-sample uses the next seed

    always_broken = responder_for("water", [Reply(broken)] * 10)
    with LoopbackServer(always_broken) as server:
        config = make_config(server.base_url, queue={"max_resamples": 1})
        summary = enhance(
            config,
            discover_annotations(dataset),
            dataset / "w2",
            RunOptions(redo=True, progress=False),
        )
    assert (summary.ok, summary.failed) == (9, 3)
    assert summary.failure_reasons == {"schema": 3}
    failed = Ledger(dataset / "w2" / "ledger.jsonl").latest()[
        "train/annotations/P0002_patch_000000#group/1000001"
    ]
    assert failed["status"] == "failed" and len(failed["attempts"]) == 2
    assert "unique_expressions" in failed["detail"]
    # The first run's valid water expressions stay: a failure never overwrites or empties data.
    water = expressions_by_target(dataset)["P0002_patch_000000#group/1000001"]
    assert [e.kind for e in water] == ["original", "enhanced", "unique", "unique"]


def test_rate_limits_server_errors_and_timeouts_are_retried(dataset):
    script = [Reply(status=429, headers={"retry-after-ms": "20"}), Reply(status=503)]
    with LoopbackServer(responder_for("water", script)) as server:
        summary = enhance(
            make_config(server.base_url), discover_annotations(dataset), dataset / "w1", QUIET
        )
    assert (summary.ok, summary.failed) == (12, 0)
    assert sum(prompt_fields(r)[0] == "water" for r in server.requests) == 9  # 3 x (429, 503, ok)

    with LoopbackServer(responder_for("water", [Reply(delay_s=3.0)])) as server:
        config = make_config(server.base_url, backend={"timeout_s": 0.5})
        summary = enhance(
            config,
            discover_annotations(dataset),
            dataset / "w2",
            RunOptions(redo=True, progress=False),
        )
    assert (summary.ok, summary.failed) == (12, 0)

    with LoopbackServer(responder_for("water", [Reply(status=500)] * 10)) as server:
        config = make_config(server.base_url, queue={"max_transport_retries": 2})
        summary = enhance(
            config,
            discover_annotations(dataset),
            dataset / "w3",
            RunOptions(redo=True, progress=False),
        )
    assert summary.failure_reasons == {"server_error": 3}
    record = Ledger(dataset / "w3" / "ledger.jsonl").latest()[
        "train/annotations/P0000_patch_000000#group/1000001"
    ]
    assert record["attempts"] == [
        {
            "key": record["attempts"][0]["key"],
            "sample": 0,
            "error": "server_error",
            "transport_errors": {"server_error": 2},  # retried twice, then given up
        }
    ]


def test_unauthorized_stops_the_run(dataset):
    refuse = LoopbackServer(lambda body, seen: Reply(status=401))
    with refuse as server, pytest.raises(FatalBackendError, match="HTTP 401"):
        enhance(make_config(server.base_url), discover_annotations(dataset), dataset / "w", QUIET)
    assert not (dataset / "w" / "ledger.jsonl").exists()


def test_cache_hits_cost_nothing_and_concurrency_spans_files(dataset):
    slow = lambda body, seen: Reply(well_formed_reply(body, seen).content, delay_s=0.05)  # noqa: E731
    with LoopbackServer(slow) as server:
        config = make_config(server.base_url, queue={"concurrency": 4})
        enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert 2 <= server.max_in_flight <= 4
        first = len(server.requests)
        (dataset / "work" / "ledger.jsonl").unlink()  # forget the ledger, keep the cache
        summary = enhance(
            config,
            discover_annotations(dataset),
            dataset / "work",
            RunOptions(redo=True, progress=False),
        )
        assert len(server.requests) == first == 12
    assert (summary.cache_hits, summary.requests_sent, summary.ok) == (12, 0, 12)
    expressions = expressions_by_target(dataset)
    assert all(sum(e.kind == "unique" for e in v) in (0, 2) for v in expressions.values())


def test_resume_never_duplicates_or_refeeds_outputs(dataset):
    with LoopbackServer() as server:
        config = make_config(server.base_url)
        files = discover_annotations(dataset)
        part = enhance(config, files, dataset / "work", RunOptions(limit=5, progress=False))
        rest = enhance(config, files, dataset / "work", QUIET)
        again = enhance(config, files, dataset / "work", QUIET)
        redo = enhance(config, files, dataset / "work", RunOptions(redo=True, progress=False))
        requests = server.requests
    assert (part.ok, rest.ok, rest.already_done, again.already_done) == (5, 7, 5, 12)
    assert len(requests) == 12 and redo.merged_from_ledger == 12
    # Earlier outputs ("... seen from above") are never sent back as originals.
    assert not any("seen from above" in "\n".join(prompt_fields(r)[1]) for r in requests)
    for uid, expressions in expressions_by_target(dataset).items():
        originals = sum(e.kind == "original" for e in expressions)
        assert sum(e.kind == "enhanced" for e in expressions) == originals, uid
        assert sum(e.kind == "unique" for e in expressions) == (2 if originals else 0), uid


@pytest.mark.slow
def test_kill_and_resume(dataset):
    slow = lambda body, seen: Reply(well_formed_reply(body, seen).content, delay_s=0.3)  # noqa: E731
    with LoopbackServer(slow) as server:
        config = make_config(server.base_url, queue={"concurrency": 2})
        config_path = dataset / "config.json"
        config_path.write_text(config.model_dump_json())
        work = dataset / "work"
        command = [sys.executable, "-m", "llm.cli", "enhance", "--config", str(config_path)]
        command += ["--annotations", str(dataset), "--work-dir", str(work), "--no-progress"]
        process = subprocess.Popen(command, env=os.environ.copy(), stderr=subprocess.PIPE)
        ledger = work / "ledger.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and process.poll() is None:
            if ledger.is_file() and len(ledger.read_text().splitlines()) >= 4:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stderr = process.stderr.read().decode()
        done_before = set(Ledger(ledger).latest())
        assert 4 <= len(done_before) < 12, stderr
        requests_before = len(server.requests)
        summary = enhance(config, discover_annotations(dataset), work, QUIET)
        resumed = server.requests[requests_before:]
    assert (
        summary.failed == 0 and summary.ok + summary.merged_from_ledger + summary.already_done == 12
    )
    # Targets recorded before the kill are never requested again (compared by request hash).
    records = Ledger(ledger).latest()
    answered_before = {records[uid]["attempts"][-1]["key"] for uid in done_before}
    resent = {request_key(body, config.backend.base_url) for body in resumed}
    assert not answered_before & resent and len(resent) == len(resumed)
    for uid, expressions in expressions_by_target(dataset).items():
        originals = sum(e.kind == "original" for e in expressions)
        assert sum(e.kind == "enhanced" for e in expressions) == originals, uid
        assert sum(e.kind == "unique" for e in expressions) == (2 if originals else 0), uid
    assert "sk-test-secret-value" not in stderr
    for path in work.rglob("*"):
        if path.is_file():
            assert b"sk-test-secret-value" not in path.read_bytes(), path


def test_bad_inputs_name_the_file(dataset, capsys):
    (dataset / "train" / "images" / "P0001_patch_000000.png").unlink()
    with LoopbackServer() as server:
        config = make_config(server.base_url)
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert summary.failure_reasons == {"render_error": 4} and summary.ok == 8
        record = Ledger(dataset / "work" / "ledger.jsonl").latest()[
            "train/annotations/P0001_patch_000000#object/1"
        ]
        assert "P0001_patch_000000.png: patch image not found" in record["detail"]

        broken = dataset / "train" / "annotations" / "P0000_patch_000001.xml"
        broken.write_text("<annotation><filename>x.png</filename>")
        config_path = dataset / "config.json"
        config_path.write_text(config.model_dump_json())
        args = ["enhance", "--config", str(config_path), "--annotations", str(dataset)]
        assert main([*args, "--work-dir", str(dataset / "work"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "P0000_patch_000001.xml: not well-formed XML" in error
