"""Batch input parts and error lines without a server: the ``batch_*`` reason recorded for each
kind of error line OpenAI writes, and the part limits (request count, bytes, one oversized
request, an aborted prepare)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from llm_fixtures import make_config, submitted_batch_job

from aerialseg.datasets.aerial_d_format import read_patch_xml, write_patch_xml
from llm import batch as batch_module
from llm.backend import make_client
from llm.batch import BatchJob, RequestTooLargeError, _error_reason, _PartWriter
from llm.enhance import RunOptions
from llm.loopback_server import LoopbackServer, Reply
from llm.prompt import prompt_version
from llm.targets import discover_annotations


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"error": {"code": "batch_expired", "message": "window"}}, "batch_expired"),
        ({"error": {"code": "rate_limit_exceeded"}}, "batch_rate_limit_exceeded"),
        ({"error": {"code": "Invalid Request!"}}, "batch_invalid_request"),
        ({"error": {"code": "--"}}, "batch_error"),
        ({"error": {"code": None}, "response": {"status_code": 500}}, "batch_http_500"),
        ({"error": None, "response": {"status_code": 400, "body": {}}}, "batch_http_400"),
        ({"error": "text", "response": None}, "batch_error"),
        ({}, "batch_error"),
    ],
)
def test_error_lines_get_a_batch_reason(record, reason):
    assert _error_reason(record) == reason


def _line(key: str, size: int) -> str:
    """A request line of exactly ``size`` bytes with its newline."""
    stub = json.dumps({"custom_id": key, "body": ""})
    return json.dumps({"custom_id": key, "body": "x" * (size - len(stub) - 1)})


def test_parts_split_at_the_request_and_byte_limits(tmp_path):
    writer = _PartWriter(tmp_path, first_index=3, max_requests=2, max_bytes=100)
    for key, size in (("a", 40), ("b", 60), ("c", 50), ("d", 50), ("e", 40)):
        writer.add(key, f"uid-{key}", _line(key, size))
    parts = writer.close()
    # a+b fill 100 bytes exactly; c+d reach 100 again; e opens a third part.
    assert [(p["input"], p["requests"], p["bytes"], p["keys"], p["uids"]) for p in parts] == [
        ("input-0003.jsonl", 2, 100, ["a", "b"], ["uid-a", "uid-b"]),
        ("input-0004.jsonl", 2, 100, ["c", "d"], ["uid-c", "uid-d"]),
        ("input-0005.jsonl", 1, 40, ["e"], ["uid-e"]),
    ]
    for part in parts:
        data = (tmp_path / part["input"]).read_bytes()
        assert len(data) == part["bytes"]
        assert [json.loads(line)["custom_id"] for line in data.splitlines()] == part["keys"]
    # Each limit alone splits too.
    writer = _PartWriter(tmp_path / "bytes", first_index=0, max_requests=10, max_bytes=100)
    for key, size in (("a", 40), ("b", 61), ("c", 60)):
        writer.add(key, key, _line(key, size))
    assert [p["keys"] for p in writer.close()] == [["a"], ["b"], ["c"]]
    writer = _PartWriter(tmp_path / "count", first_index=0, max_requests=2, max_bytes=10_000)
    for key in "abc":
        writer.add(key, key, _line(key, 30))
    assert [p["keys"] for p in writer.close()] == [["a", "b"], ["c"]]


def test_one_request_over_the_byte_limit_is_refused_by_name(tmp_path):
    writer = _PartWriter(tmp_path, first_index=0, max_requests=10, max_bytes=100)
    writer.add("a", "uid-a", _line("a", 100))  # exactly the limit: fits
    with pytest.raises(RequestTooLargeError) as refused:
        writer.add("b", "train/annotations/P1#object/2", _line("b", 101))
    assert str(refused.value) == (
        "train/annotations/P1#object/2: one request is 101 bytes, more than the part limit of "
        "100 bytes (--max-bytes); raise the limit, or make requests smaller "
        "(render.image_format: jpeg, a smaller render.image_size)"
    )
    # An aborted prepare deletes the parts it wrote; nothing refers to them.
    writer.discard()
    assert writer.parts == [] and list(tmp_path.iterdir()) == []
    assert writer.close() == []


def test_prepare_is_quiet_unless_asked(dataset, capsys):
    config = make_config("http://127.0.0.1:9/v1")  # prepare never calls the server
    files = discover_annotations(dataset)
    summary = BatchJob(config, dataset / "quiet").prepare(files)
    assert (summary.parts, summary.requests) == (1, 12)
    assert capsys.readouterr().err == ""
    BatchJob(config, dataset / "loud").prepare(files, RunOptions(progress=True))
    assert "llm batch prepare" in capsys.readouterr().err


def test_prepare_counts_what_it_leaves_out_and_records_the_prompt_version(dataset, monkeypatch):
    """An unreadable image costs its targets (counted), not the rest of the run; a request
    already written in this run or already cached is not written again; the part records the
    prompt version and keeps non-ASCII text as UTF-8; the default part limits are the
    documented 50,000 requests and 190 MB (under OpenAI's 200 MB per file)."""
    limits = []

    class LimitsSeen(_PartWriter):
        def __init__(self, folder, first_index, max_requests, max_bytes):
            limits.append((max_requests, max_bytes))
            super().__init__(folder, first_index, max_requests, max_bytes)

    monkeypatch.setattr(batch_module, "_PartWriter", LimitsSeen)
    files = discover_annotations(dataset)
    first = read_patch_xml(files[0].source)
    first.objects[0].expressions[0].text = "the café's small vehicle"
    write_patch_xml(first, files[0].source)
    (dataset / "train" / "images" / f"{files[-1].source.stem}.png").write_bytes(b"no image")
    config = make_config("http://127.0.0.1:9/v1")  # prepare never calls the server
    job = BatchJob(config, dataset / "work")
    summary = job.prepare(files + files[:1])  # the first file twice
    assert (summary.requests, summary.render_errors, summary.skipped_in_flight) == (8, 4, 4)
    assert (summary.parts, summary.skipped_cached) == (1, 0)
    assert limits == [(50_000, 190_000_000)]
    (part,) = job.load_state()["parts"]
    assert part["prompt_version"] == prompt_version(config)
    data = (job.folder / part["input"]).read_bytes()
    assert "the café's small vehicle".encode() in data and len(data) == part["bytes"]

    for key in part["keys"][:2]:
        job.cache.put(key, {"choices": []}, origin="batch")
    again = job.prepare(files)
    assert (again.requests, again.skipped_cached, again.skipped_in_flight) == (0, 2, 6)
    assert again.render_errors == 4


def test_submit_resumes_without_uploading_twice_and_labels_the_batch(dataset):
    """A batch creation that fails after the upload: the next submit reuses the uploaded file."""
    with LoopbackServer(batch_polls=0) as server:
        config = make_config(server.base_url)
        job = BatchJob(config, dataset / "work")
        job.prepare(discover_annotations(dataset))
        client = make_client(config.backend)
        job.status(client)  # nothing submitted yet: nothing to poll
        uploads, creations = [], []

        def upload(**kwargs):
            uploads.append(kwargs["purpose"])
            return client.files.create(**kwargs)

        def create(**kwargs):
            creations.append(kwargs)
            if len(creations) == 1:
                raise ConnectionError("dropped")
            return client.batches.create(**kwargs)

        flaky = SimpleNamespace(
            files=SimpleNamespace(create=upload), batches=SimpleNamespace(create=create)
        )
        with pytest.raises(ConnectionError):
            job.submit(flaky)
        file_id = job.load_state()["parts"][0]["file_id"]
        before = time.time()
        (part,) = job.submit(flaky)
        assert uploads == ["batch"] and [c["input_file_id"] for c in creations] == [file_id] * 2
        assert before <= part["submitted"] <= time.time()
        assert job.load_state()["parts"][0]["batch_id"] == part["batch_id"]
        batch = client.batches.retrieve(part["batch_id"])
        assert batch.metadata == {"aerialseg_part": "input-0000.jsonl"}
        assert job.submit(flaky) == []  # submitted parts are not sent again


def test_status_polls_only_running_batches_and_collect_reads_past_blank_lines(dataset, capsys):
    with LoopbackServer(batch_polls=0) as server:
        job, files, client = submitted_batch_job(server.base_url, dataset)
        polled = []

        def retrieve(batch_id):
            polled.append(batch_id)
            return client.batches.retrieve(batch_id)

        poller = SimpleNamespace(batches=SimpleNamespace(retrieve=retrieve))
        while job.status(poller)[0]["status"] != "completed":
            assert len(polled) < 5
        (part,) = job.load_state()["parts"]
        assert part["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
        polls = len(polled)
        job.status(poller)  # a finished batch is not polled again
        assert len(polled) == polls
        # A blank line in the middle of the output file does not end it.
        stored = server.files[part["output_file_id"]]
        lines = stored["data"].decode().splitlines()
        stored["data"] = ("\n".join([lines[0], "", *lines[1:]]) + "\n").encode()
        capsys.readouterr()
        counts, _ = job.collect(files, client)
    assert counts == {"stored": 12, "errors": 0, "missing": 0, "parts_collected": 1}
    assert capsys.readouterr().err == ""  # the offline merge shows no progress bar


def test_a_batch_without_an_output_file_records_every_line_from_its_error_file(dataset):
    with LoopbackServer(lambda body, seen: Reply(status=500), batch_polls=0) as server:
        job, files, client = submitted_batch_job(server.base_url, dataset)
        counts, _ = job.collect(files, client)
        counts_after_polls = counts
        while counts_after_polls["parts_collected"] == 0:
            counts_after_polls, _ = job.collect(files, client)
    (part,) = job.load_state()["parts"]
    assert part.get("output_file_id") is None
    assert counts_after_polls == {"stored": 0, "errors": 12, "missing": 0, "parts_collected": 1}
    assert part["failures"] == dict.fromkeys(part["keys"], "batch_http_500")
