"""Batch lines without an answer (error, expired, missing) come back: ledger, report, prepare."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

from llm_fixtures import make_config, submitted_batch_job

from llm.backend import make_client
from llm.batch import BatchJob
from llm.cli import main
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.report import build_report
from llm.targets import discover_annotations

DROPPED = "train/annotations/P0000_patch_000000#object/1"  # its line is missing from the output
EXPIRED = "train/annotations/P0001_patch_000000#object/2"  # its line says batch_expired


def edited_downloads(client, uid_of_key: dict[str, str]):
    """The SDK client, but downloaded batch files lose DROPPED's line and turn EXPIRED's into the
    error line OpenAI writes for a request that the completion window cut off."""

    def content(file_id: str):
        lines = []
        for line in client.files.content(file_id).read().decode().splitlines():
            record = json.loads(line)
            uid = uid_of_key[record["custom_id"]]
            if uid == DROPPED:
                continue
            if uid == EXPIRED:
                record["response"] = None
                record["error"] = {"code": "batch_expired", "message": "window expired"}
            lines.append(json.dumps(record))
        return io.BytesIO(("\n".join(lines) + "\n").encode())

    files = SimpleNamespace(create=client.files.create, content=content)
    return SimpleNamespace(batches=client.batches, files=files)


def input_lines(work) -> dict[str, list[dict]]:
    return {
        path.name: [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted((work / "batch").glob("input-*.jsonl"))
    }


def test_failed_expired_and_missing_lines_are_recorded_reported_and_rebatched(dataset, capsys):
    def respond(body, seen):  # every water request fails the first time (an error-file line)
        if prompt_fields(body)[0] == "water" and seen == 0:
            return Reply(status=500)
        return well_formed_reply(body, seen)

    work = dataset / "work"
    files = discover_annotations(dataset)
    with LoopbackServer(respond, batch_polls=0) as server:
        config = make_config(server.base_url)
        job = BatchJob(config, work)
        assert job.prepare(files).requests == 12
        first = job.load_state()["parts"][0]
        uid_of_key = dict(zip(first["keys"], first["uids"]))
        client = edited_downloads(make_client(config.backend), uid_of_key)
        job.submit(client)
        job.status(client)
        assert job.prepare(files).skipped_in_flight == 12  # not collected yet: still in flight

        counts, summary = job.collect(files, client)
        assert counts == {"stored": 7, "errors": 4, "missing": 1, "parts_collected": 1}
        expected_reasons = {"batch_http_500": 3, "batch_expired": 1, "batch_missing": 1}
        assert (summary.ok, summary.failed) == (7, 5)
        assert summary.failure_reasons == expected_reasons

        latest = Ledger(work / "ledger.jsonl").latest()
        failed = {uid for uid, record in latest.items() if record["status"] == "failed"}
        water = {uid for uid in uid_of_key.values() if uid.endswith("#group/1000001")}
        assert failed == water | {DROPPED, EXPIRED}
        assert latest[DROPPED]["reason"] == "batch_missing"
        assert latest[EXPIRED]["attempts"][0] == {
            "key": next(k for k, u in uid_of_key.items() if u == EXPIRED),
            "sample": 0,
            "origin": "batch",
            "error": "batch_expired",
        }

        report = build_report(work)
        assert report["failure_reasons"] == expected_reasons
        assert report["batch_errors"] == expected_reasons
        assert (report["ok"], report["failed"]) == (7, 5)
        assert main(["report", "--work-dir", str(work)]) == 0
        text = capsys.readouterr().out
        assert "batch lines without an answer" in text and "batch_missing" in text

        # prepare re-batches exactly the lines that got no answer: same requests, same keys.
        again = job.prepare(files)
        assert (again.requests, again.parts) == (5, 1)
        lines = input_lines(work)
        assert list(lines) == ["input-0000.jsonl", "input-0001.jsonl"]
        failed_keys = {k for k, u in uid_of_key.items() if u in failed}
        assert {line["custom_id"] for line in lines["input-0001.jsonl"]} == failed_keys
        old_bodies = {line["custom_id"]: line["body"] for line in lines["input-0000.jsonl"]}
        assert all(
            old_bodies[line["custom_id"]] == line["body"] for line in lines["input-0001.jsonl"]
        )
        assert job.prepare(files).requests == 0  # the new part is in flight now
        before = len(server.requests)
        online = enhance(config, files, work, RunOptions(progress=False))
        assert (online.awaiting_batch, online.requests_sent, online.already_done) == (5, 0, 7)
        assert len(server.requests) == before  # never paid twice for a line a batch may answer

        job.submit(client)
        job.status(client)
        counts, summary = job.collect(files, make_client(config.backend))
        assert counts == {"stored": 5, "errors": 0, "missing": 0, "parts_collected": 1}
        assert (summary.ok, summary.failed, summary.already_done) == (5, 0, 7)

    report = build_report(work)
    assert (report["ok"], report["failed"], report["failure_reasons"]) == (12, 0, {})
    assert report["batch_errors"] == expected_reasons  # history of every collected part


def test_a_dead_batch_returns_all_its_lines(dataset):
    with LoopbackServer(batch_polls=5) as server:
        job, files, real = submitted_batch_job(server.base_url, dataset)

        def retrieve(batch_id):  # the provider cancelled it before any line ran
            batch = real.batches.retrieve(batch_id)
            return batch.model_copy(update={"status": "cancelled"})

        batches = SimpleNamespace(retrieve=retrieve, create=real.batches.create)
        client = SimpleNamespace(batches=batches, files=real.files)
        counts, summary = job.collect(files, client)
        assert counts == {"stored": 0, "errors": 0, "missing": 12, "parts_collected": 1}
        assert summary.failure_reasons == {"batch_cancelled": 12}
        ledger = dataset / "work" / "ledger.jsonl"
        lines = ledger.read_text()
        _, again = job.collect(files, client)  # nothing new: the same failures, not re-appended
        assert again.failure_reasons == {"batch_cancelled": 12} and ledger.read_text() == lines
        assert job.prepare(files).requests == 12
