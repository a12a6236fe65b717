"""Batch API error paths: failed lines, answers for unknown requests, rejected input files.

docs/llm.md: ``collect`` stores answers in the cache and merges them offline; only answers (HTTP
200 lines of the output file) are paid answers. A failed line must never be cached as if it were
one (a re-run would then "answer" from an error body), must leave the XML untouched, and must be
requested again by the next online run.
"""

from __future__ import annotations

import json

from llm_fixtures import make_config, submitted_batch_job

from aerialseg.datasets.aerial_d_format import read_patch_xml
from llm.backend import make_client
from llm.batch import BatchJob
from llm.enhance import RunOptions, enhance
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.targets import discover_annotations


def _water_fails(status: int):
    def respond(body, seen):
        if prompt_fields(body)[0] == "water" and seen == 0:
            return Reply(status=status)
        return well_formed_reply(body, seen)

    return respond


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _water_kinds(root) -> list[list[str]]:
    kinds = []
    for path in sorted((root / "train" / "annotations").glob("*.xml")):
        group = next(g for g in read_patch_xml(path).groups if g.category == "water")
        kinds.append([e.kind for e in group.expressions])
    return kinds


def test_failed_lines_are_logged_never_cached_and_requested_again_online(dataset):
    with LoopbackServer(_water_fails(500), batch_polls=0) as server:
        config = make_config(server.base_url)
        job = BatchJob(config, dataset / "work")
        files = discover_annotations(dataset)
        assert job.prepare(files).requests == 12
        water_keys = {
            line["custom_id"]
            for line in _lines(dataset / "work" / "batch" / "input-0000.jsonl")
            if prompt_fields(line["body"])[0] == "water"
        }
        client = make_client(config.backend)
        job.submit(client)
        job.status(client)  # validated: in progress
        counts, _ = job.collect(files, client)
        assert (counts["stored"], counts["errors"], counts["parts_collected"]) == (9, 3, 1)
        errors = _lines(dataset / "work" / "batch" / "errors.jsonl")
        assert {e["custom_id"] for e in errors} == water_keys
        assert {e["response"]["status_code"] for e in errors} == {500}
        assert {e["part"] for e in errors} == {"input-0000.jsonl"}  # each line names its part
        assert not any(key in job.cache for key in water_keys)
        assert all(job.cache.get(key) is None for key in water_keys)
        assert _water_kinds(dataset) == [["original"]] * 3

        batch_requests = len(server.requests)
        online = enhance(config, files, dataset / "work", RunOptions(progress=False))
        resent = server.requests[batch_requests:]
    assert sorted(prompt_fields(body)[0] for body in resent) == ["water"] * 3
    assert online.ok == 3 and online.failed == 0
    assert _water_kinds(dataset) == [["original", "enhanced", "unique", "unique"]] * 3


def test_a_client_error_line_is_not_cached_either(dataset):
    with LoopbackServer(_water_fails(400), batch_polls=0) as server:
        job, files, client = submitted_batch_job(server.base_url, dataset)
        job.status(client)
        counts, _ = job.collect(files, client)
    assert counts["stored"] == 9 and counts["errors"] == 3
    cached_bodies = [entry["response"] for entry in job.cache.entries()]
    assert len(cached_bodies) == 9
    assert all(body.get("object") == "chat.completion" for body in cached_bodies)


def test_answers_for_requests_of_other_parts_are_not_stored(dataset):
    """An output line whose custom_id the part never sent is an error, not an answer."""
    with LoopbackServer(batch_polls=0) as server:
        job, files, client = submitted_batch_job(server.base_url, dataset)
        job.status(client)
        job.status(client)  # completed: the output file exists now
        state = job.load_state()
        output_id = state["parts"][0]["output_file_id"]
        stored = server.files[output_id]
        records = _lines_of_bytes(stored["data"])
        replaced = records[0]["custom_id"]
        records[0]["custom_id"] = "f" * 64
        stored["data"] = ("\n".join(json.dumps(r) for r in records) + "\n").encode()
        counts, _ = job.collect(files, client)
    assert counts["stored"] == 11 and counts["errors"] == 1
    assert "f" * 64 not in job.cache
    # The part records its own request as missing, not the foreign line.
    assert job.load_state()["parts"][0]["failures"] == {replaced: "batch_missing"}


def _lines_of_bytes(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def test_a_batch_whose_input_is_refused_collects_nothing(dataset):
    with LoopbackServer(batch_polls=0) as server:
        config = make_config(server.base_url)
        job = BatchJob(config, dataset / "work")
        files = discover_annotations(dataset)
        job.prepare(files)
        part = dataset / "work" / "batch" / "input-0000.jsonl"
        lines = part.read_text().splitlines()
        part.write_text("\n".join([*lines, lines[0]]) + "\n")  # a duplicated custom_id
        client = make_client(config.backend)
        job.submit(client)
        counts, summary = job.collect(files, client)
        assert job.load_state()["parts"][0]["status"] == "failed"
        assert server.requests == []  # nothing was run
    assert counts["stored"] == 0
    assert summary.ok == 0 and list(job.cache.entries()) == []
    assert _water_kinds(dataset) == [["original"]] * 3
