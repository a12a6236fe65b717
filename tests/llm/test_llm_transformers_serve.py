"""``llm enhance`` against ``transformers serve`` (a real OpenAI-compatible server) on CPU.

The served model is a tiny random-init Gemma 3, so its answers are garbage: every target must end
as a recorded failure with a reason, and no annotation may change.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from llm_fixtures import make_config, write_patch

from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.targets import discover_annotations
from llm.tiny import write_tiny_gemma3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited: {process.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail("transformers serve did not start in time")


@pytest.mark.slow
def test_garbage_answers_from_transformers_serve_are_recorded_failures(tmp_path):
    model = write_tiny_gemma3(tmp_path / "tiny-gemma3")
    annotation = write_patch(tmp_path / "aeriald", "P0000_patch", seed=0)
    before = annotation.read_bytes()
    port = _free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    command += ["--default-seed", "0", "--log-level", "error"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        _wait_until_serving(base_url, process)
        config = make_config(
            base_url,
            backend={"model": str(model), "structured_output": "none", "timeout_s": 60},
            sampling={"max_completion_tokens": 24, "temperature": 1.0},
            queue={"concurrency": 2, "max_resamples": 1},
        )
        work = tmp_path / "work"
        files = discover_annotations(tmp_path / "aeriald")
        summary = enhance(config, files, work, RunOptions(progress=False))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert (summary.ok, summary.failed, summary.requests_sent) == (0, 4, 8)
    records = Ledger(work / "ledger.jsonl").latest().values()
    assert {r["status"] for r in records} == {"failed"}
    allowed = {"truncated", "invalid_json", "empty_answer", "schema"}
    assert set(summary.failure_reasons) <= allowed, summary.failure_reasons
    for record in records:
        assert record["reason"] in allowed and record["detail"]
        assert [a["sample"] for a in record["attempts"]] == [0, 1]
        assert all(a["usage"]["prompt_tokens"] > 0 for a in record["attempts"])
    assert annotation.read_bytes() == before  # garbage never reaches the annotations
    assert json.loads((work / "runs.jsonl").read_text())["summary"]["failed"] == 4
