"""The OpenAI Batch API path: ``llm batch prepare | submit | status | collect``.

- ``prepare`` renders every target that needs a request (same planning as ``llm enhance``) and
  writes request lines ``{custom_id, method, url, body}`` into ``<work>/batch/input-NNNN.jsonl``
  parts of at most ``max_requests`` lines and ``max_bytes`` bytes. ``custom_id`` is the request's
  cache key, so answers map back exactly (no text or file-name matching). Requests already cached
  or already in a live part are skipped, so re-running ``prepare`` never pays twice.
- ``submit`` uploads each new part (``purpose="batch"``) and creates its batch.
- ``status`` polls the batches and records their state.
- ``collect`` downloads finished outputs into the response cache (``origin="batch"``) and then runs
  ``llm enhance`` offline: valid answers are merged, invalid ones are recorded as failures; a later
  online ``llm enhance`` re-samples just those.
- Lines of a collected part that got no answer (an error line, an expired or cancelled batch, or a
  line missing from both files) are recorded in the part (``failures``: key → reason) and in the
  ledger as ``failed`` with a ``batch_*`` reason. A collected part is no longer in flight, so the
  next ``prepare`` writes exactly those requests again (they are not cached); ``llm enhance`` would
  request them online too.

State lives in ``<work>/batch/state.json`` (:mod:`llm.batch_state`; rewritten atomically after
every change).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llm.backend import chat_request_body, make_client
from llm.batch_state import (
    batch_failures,
    load_batch_state,
    pending_keys,
    save_batch_state,
)
from llm.cache import ResponseCache, request_key
from llm.config import EnhanceConfig
from llm.enhance import EnhanceRunner, RunOptions, RunSummary
from llm.prompt import build_prompt, openai_messages, prompt_version
from llm.render import RenderError, render_enhance_target
from llm.targets import AnnotationFile

ENDPOINT = "/v1/chat/completions"
# Terminal states in which a batch will never produce (more) output.
DEAD_STATES = {"failed", "expired", "cancelled"}
DONE_STATES = {"completed", *DEAD_STATES}


class RequestTooLargeError(ValueError):
    """One request line is larger than the part size limit (``--max-bytes``)."""


def _error_reason(record: dict[str, Any]) -> str:
    """A short ``batch_*`` reason code for an error line of a batch output or error file."""
    error = record.get("error") or {}
    code = error.get("code") if isinstance(error, dict) else None
    if code:
        code = re.sub(r"[^a-z0-9_]+", "_", str(code).lower()).strip("_") or "error"
        return code if code.startswith("batch_") else f"batch_{code}"
    status = (record.get("response") or {}).get("status_code")
    return f"batch_http_{status}" if status else "batch_error"


@dataclass
class PrepareSummary:
    parts: int = 0
    requests: int = 0
    skipped_cached: int = 0
    skipped_in_flight: int = 0
    render_errors: int = 0


class BatchJob:
    """The batch folder of a work dir."""

    def __init__(self, config: EnhanceConfig, work_dir: str | Path):
        self.config = config
        self.work_dir = Path(work_dir)
        self.folder = self.work_dir / "batch"
        self.cache = ResponseCache(self.work_dir / "cache")

    # ------------------------------------------------------------ state

    def load_state(self) -> dict[str, Any]:
        return load_batch_state(self.work_dir)

    def save_state(self, state: dict[str, Any]) -> None:
        save_batch_state(self.work_dir, state)

    # ------------------------------------------------------------ prepare

    def prepare(
        self,
        files: list[AnnotationFile],
        options: RunOptions | None = None,
        max_requests: int = 50_000,
        max_bytes: int = 190_000_000,
    ) -> PrepareSummary:
        state = self.load_state()
        in_flight = pending_keys(state)
        options = options or RunOptions(progress=False)
        planner = EnhanceRunner(self.config, self.work_dir, options)
        selected = planner.select_sample(files) if options.sample is not None else None
        summary = PrepareSummary()
        writer = _PartWriter(self.folder, len(state["parts"]), max_requests, max_bytes)
        try:
            for file in tqdm(
                files, desc="llm batch prepare", unit="file", disable=not options.progress
            ):
                for target in planner.plan(file, selected).todo:
                    try:
                        images = render_enhance_target(target, self.config.render)
                    except RenderError:
                        summary.render_errors += 1
                        continue
                    prompt = build_prompt(target, images.mode, self.config)
                    body = chat_request_body(
                        self.config, openai_messages(prompt, images), len(target.originals), 0
                    )
                    key = request_key(body, self.config.backend.base_url)
                    if key in self.cache:
                        summary.skipped_cached += 1
                    elif key in in_flight:
                        summary.skipped_in_flight += 1
                    else:
                        line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
                        writer.add(key, target.uid, json.dumps(line, ensure_ascii=False))
                        in_flight.add(key)
                        summary.requests += 1
        except BaseException:
            writer.discard()  # parts not yet in the state file: nothing refers to them
            raise
        new_parts = writer.close()
        for part in new_parts:
            part["prompt_version"] = prompt_version(self.config)
        state["parts"].extend(new_parts)
        self.save_state(state)
        summary.parts = len(new_parts)
        return summary

    # ------------------------------------------------------------ remote steps

    def submit(self, client=None) -> list[dict]:
        """Upload and start every part that has no batch yet; returns the submitted parts."""
        client = client or make_client(self.config.backend)
        state = self.load_state()
        submitted = []
        for part in state["parts"]:
            if part.get("batch_id"):
                continue
            if not part.get("file_id"):
                with (self.folder / part["input"]).open("rb") as stream:
                    part["file_id"] = client.files.create(file=stream, purpose="batch").id
                self.save_state(state)
            batch = client.batches.create(
                input_file_id=part["file_id"],
                endpoint=ENDPOINT,
                completion_window="24h",
                metadata={"aerialseg_part": part["input"]},
            )
            part.update(batch_id=batch.id, status=batch.status, submitted=time.time())
            self.save_state(state)
            submitted.append(part)
        return submitted

    def status(self, client=None) -> list[dict]:
        """Poll every submitted, unfinished part; returns all parts."""
        client = client or make_client(self.config.backend)
        state = self.load_state()
        for part in state["parts"]:
            if not part.get("batch_id") or part.get("status") in DONE_STATES:
                continue
            batch = client.batches.retrieve(part["batch_id"])
            part["status"] = batch.status
            part["output_file_id"] = batch.output_file_id
            part["error_file_id"] = batch.error_file_id
            if batch.request_counts is not None:
                part["request_counts"] = batch.request_counts.model_dump()
        self.save_state(state)
        return state["parts"]

    def collect(self, files: list[AnnotationFile], client=None) -> tuple[dict, RunSummary]:
        """Cache the answers of finished parts, then merge them with an offline enhance run.

        Lines without an answer are stored in the part as ``failures`` (key → ``batch_*`` reason),
        written to the ledger by the offline run, and requested again by the next ``prepare``.

        Returns ``({stored, errors, missing, parts_collected}, summary of the offline run)``.
        """
        client = client or make_client(self.config.backend)
        self.status(client)
        state = self.load_state()
        counts = {"stored": 0, "errors": 0, "missing": 0, "parts_collected": 0}
        for part in state["parts"]:
            if part.get("collected") or part.get("status") not in DONE_STATES:
                continue
            failures = self._read_part(client, part, counts)
            # Lines in neither file: the batch ended (expired, cancelled, failed) or lost them.
            status = part["status"]
            missing_reason = "batch_missing" if status == "completed" else f"batch_{status}"
            for key in part["keys"]:
                if key not in failures and key not in self.cache:
                    failures[key] = missing_reason
                    counts["missing"] += 1
            part["failures"] = failures
            part["collected"] = True
            counts["parts_collected"] += 1
            self.save_state(state)
        runner = EnhanceRunner(
            self.config,
            self.work_dir,
            RunOptions(offline=True, progress=False),
            batch_failures=batch_failures(state),
        )
        return counts, asyncio.run(runner.run(files))

    def _read_part(self, client, part: dict[str, Any], counts: dict[str, int]) -> dict[str, str]:
        """Cache the answered lines of a part's output and error files; ``key → reason`` of the
        lines that came back with an error. Error lines are also logged to ``errors.jsonl``."""
        keys = set(part["keys"])
        failures: dict[str, str] = {}
        error_log = self.folder / "errors.jsonl"
        for file_key in ("output_file_id", "error_file_id"):
            if not part.get(file_key):
                continue
            text = client.files.content(part[file_key]).read().decode("utf-8")
            for line in text.splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                key = record.get("custom_id")
                response = record.get("response") or {}
                if key in keys and response.get("status_code") == 200:
                    self.cache.put(key, response["body"], "batch")
                    failures.pop(key, None)
                    counts["stored"] += 1
                    continue
                counts["errors"] += 1
                if key in keys and key not in self.cache:
                    failures[key] = _error_reason(record)
                with error_log.open("a", encoding="utf-8") as stream:
                    stream.write(json.dumps({"part": part["input"], **record}) + "\n")
        return failures


class _PartWriter:
    """Writes request lines into ``input-NNNN.jsonl`` parts within the count and size limits."""

    def __init__(self, folder: Path, first_index: int, max_requests: int, max_bytes: int):
        self.folder = folder
        self.index = first_index
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.parts: list[dict] = []
        self._stream = None
        self._part: dict | None = None

    def add(self, key: str, uid: str, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        if len(data) > self.max_bytes:
            raise RequestTooLargeError(
                f"{uid}: one request is {len(data)} bytes, more than the part limit of "
                f"{self.max_bytes} bytes (--max-bytes); raise the limit, or make requests smaller "
                "(render.image_format: jpeg, a smaller render.image_size)"
            )
        part = self._part
        if (
            part is None
            or part["requests"] >= self.max_requests
            or (part["bytes"] + len(data) > self.max_bytes)
        ):
            self._open()
            part = self._part
        assert part is not None and self._stream is not None
        self._stream.write(data)
        part["requests"] += 1
        part["bytes"] += len(data)
        part["keys"].append(key)
        part["uids"].append(uid)

    def _open(self) -> None:
        self._close_stream()
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"input-{self.index:04d}.jsonl"
        self.index += 1
        self._part = {"input": name, "requests": 0, "bytes": 0, "keys": [], "uids": []}
        self.parts.append(self._part)
        self._stream = (self.folder / name).open("wb")

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> list[dict]:
        self._close_stream()
        return self.parts

    def discard(self) -> None:
        """Delete the parts written so far (an aborted ``prepare``)."""
        self._close_stream()
        for part in self.parts:
            (self.folder / part["input"]).unlink(missing_ok=True)
        self.parts = []
