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

State lives in ``<work>/batch/state.json`` (rewritten atomically after every change).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datagen.storage import atomic_write_text
from llm.backend import chat_request_body, make_client
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


class BatchStateError(RuntimeError):
    """The batch folder is missing or its state file is unreadable."""


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
        self.state_path = self.folder / "state.json"
        self.cache = ResponseCache(self.work_dir / "cache")

    # ------------------------------------------------------------ state

    def load_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {"parts": []}
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BatchStateError(f"{self.state_path}: unreadable batch state ({exc})") from None

    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=2))

    # ------------------------------------------------------------ prepare

    def prepare(
        self,
        files: list[AnnotationFile],
        options: RunOptions | None = None,
        max_requests: int = 50_000,
        max_bytes: int = 190_000_000,
    ) -> PrepareSummary:
        state = self.load_state()
        in_flight = {
            key
            for part in state["parts"]
            if part.get("status") not in DEAD_STATES
            for key in part["keys"]
        }
        options = options or RunOptions(progress=False)
        planner = EnhanceRunner(self.config, self.work_dir, options)
        selected = planner.select_sample(files) if options.sample is not None else None
        summary = PrepareSummary()
        writer = _PartWriter(self.folder, len(state["parts"]), max_requests, max_bytes)
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

        Returns ``({stored, errors, parts_collected}, summary of the offline run)``.
        """
        client = client or make_client(self.config.backend)
        self.status(client)
        state = self.load_state()
        counts = {"stored": 0, "errors": 0, "parts_collected": 0}
        error_log = self.folder / "errors.jsonl"
        for part in state["parts"]:
            if part.get("collected") or part.get("status") not in DONE_STATES:
                continue
            keys = set(part["keys"])
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
                        counts["stored"] += 1
                    else:
                        counts["errors"] += 1
                        with error_log.open("a", encoding="utf-8") as stream:
                            stream.write(json.dumps({"part": part["input"], **record}) + "\n")
            part["collected"] = True
            counts["parts_collected"] += 1
            self.save_state(state)
        runner = EnhanceRunner(self.config, self.work_dir, RunOptions(offline=True, progress=False))
        return counts, asyncio.run(runner.run(files))


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
            raise ValueError(f"{uid}: one request is {len(data)} bytes, over the part limit")
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
