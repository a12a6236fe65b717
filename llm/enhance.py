"""``llm enhance``: the async request queue over all targets of all annotation files.

Flow per run:

1. The API key is checked before anything else (:func:`llm.backend.make_async_client`).
2. A producer reads annotation files one by one and plans each target: skip it when its entity
   already has LLM expressions (unless ``redo``), merge it from the ledger when an earlier run got a
   valid answer with the same model and prompt version, else queue it. The queue is bounded, so
   memory does not grow with the dataset.
3. ``concurrency`` workers render the two images, build the prompt and send the request (cache
   first), validate the answer and re-sample with the next seed when it is invalid. Each resolved
   target is appended to the ledger at once.
   Sample k of a target has its own cache key (seed + k), so a re-run re-validates the samples it
   already paid for (free) and then asks for new ones: up to ``1 + queue.max_resamples`` new
   requests per target and run, and ``queue.sample_budget`` samples per target over all runs.
   A first request that sits in a Batch API part not yet collected is not sent (``awaiting_batch``).
4. When the last target of a file is resolved, the file is rewritten atomically: the entity's old
   LLM expressions are replaced by the validated ones, each with provenance (source id, model,
   prompt version, time). Failed targets are left untouched and recorded in the ledger with their
   reason.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aerialformats.aerial_d import (
    Expression,
    PatchAnnotation,
    remove_stale_temp_files,
    write_patch_xml,
)
from llm.backend import (
    FatalBackendError,
    TransportFailure,
    chat_request_body,
    make_async_client,
    send_chat,
)
from llm.batch_state import load_batch_state, pending_keys
from llm.cache import ResponseCache, request_key
from llm.config import EnhanceConfig
from llm.ledger import Ledger
from llm.prompt import build_prompt, openai_messages, prompt_version
from llm.render import RenderError, render_enhance_target
from llm.schema import InvalidAnswer, validate_answer
from llm.targets import (
    AnnotationFile,
    EnhanceTarget,
    find_entity,
    has_llm_expressions,
    stratified_sample,
    targets_of_patch,
)


@dataclass
class RunOptions:
    """``redo``: regenerate targets that already have LLM expressions. ``offline``: answer from the
    cache only (after ``llm batch collect``). ``sample``: a stratified sample of that many targets
    (seeded). ``limit``: request at most this many targets in this run."""

    redo: bool = False
    offline: bool = False
    sample: int | None = None
    sample_seed: int = 0
    limit: int | None = None
    progress: bool = True


@dataclass
class RunSummary:
    files: int = 0
    files_written: int = 0
    already_done: int = 0
    merged_from_ledger: int = 0
    ok: int = 0
    failed: int = 0
    # Targets left without a ledger record: offline with nothing cached, or (online) waiting in
    # a Batch API part that `llm batch collect` has not read yet (also in `awaiting_batch`).
    not_collected: int = 0
    awaiting_batch: int = 0
    requests_sent: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    failure_reasons: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failure_reasons"] = dict(self.failure_reasons)
        return data


def iso_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def _message(response: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(content, finish_reason, refusal)`` of the first choice of a chat-completion JSON."""
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return message.get("content"), choices[0].get("finish_reason"), message.get("refusal")


def _usage(response: dict[str, Any]) -> dict[str, int]:
    usage = response.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "reasoning_tokens": int(details.get("reasoning_tokens") or 0),
    }


def llm_expressions(record: dict[str, Any]) -> list[Expression]:
    """The XML expressions of an ``ok`` ledger record, with provenance."""
    result = record["result"]
    provenance = {
        "model": record.get("served_model") or record["model"],
        "prompt_version": record["prompt_version"],
        "time": record["time"],
    }
    expressions = [
        Expression(text=item["variation"], type="enhanced", source_id=source_id, **provenance)
        for item, source_id in zip(result["enhanced_expressions"], record["source_ids"])
    ]
    expressions += [
        Expression(text=text, type="unique", **provenance) for text in result["unique_expressions"]
    ]
    return expressions


def merge_answers(annotation: PatchAnnotation, answers: list[tuple[EnhanceTarget, dict]]) -> None:
    """Replace each target's LLM expressions by those of its ``ok`` record (originals untouched)."""
    for target, record in answers:
        entity = find_entity(annotation, target)
        originals = [e for e in entity.expressions if e.type is None]
        entity.expressions = originals + llm_expressions(record)


@dataclass
class _PatchJob:
    file: AnnotationFile
    annotation: PatchAnnotation
    todo: list[EnhanceTarget] = field(default_factory=list)
    answers: list[tuple[EnhanceTarget, dict]] = field(default_factory=list)
    pending: int = 0


class EnhanceRunner:
    """One run of the queue; see the module docstring. ``client`` overrides the SDK client."""

    def __init__(
        self,
        config: EnhanceConfig,
        work_dir: str | Path,
        options: RunOptions | None = None,
        client: Any = None,
        batch_failures: dict[str, str] | None = None,
    ):
        self.config = config
        # Offline runs after `llm batch collect`: request key → reason the batch gave no answer.
        self.batch_failures = batch_failures or {}
        # Online runs: keys a submitted batch may still answer; requesting them would pay twice.
        self.batch_pending: set[str] = set()
        self.options = options or RunOptions()
        self.work_dir = Path(work_dir)
        self.version = prompt_version(config)
        self.cache = ResponseCache(self.work_dir / "cache")
        self.ledger = Ledger(self.work_dir / "ledger.jsonl")
        self.client = client
        self.summary = RunSummary()
        self.previous: dict[str, dict] | None = None
        self._rng = random.Random(0)
        self._transport_losses = 0
        self._enqueued = 0
        self._progress = None

    # ---------------------------------------------------------------- planning

    def _reusable(self, record: dict | None, target: EnhanceTarget) -> bool:
        return bool(
            record
            and record.get("status") == "ok"
            and record.get("prompt_version") == self.version
            and record.get("model") == self.config.backend.model
            and record.get("originals") == [[o.id, o.text] for o in target.originals]
        )

    def plan(self, file: AnnotationFile, selected: set[str] | None = None) -> _PatchJob:
        """Read one file and sort its targets into done, merge-from-ledger and to-request."""
        if self.previous is None:
            self.previous = self.ledger.latest()
        annotation = file.read()
        job = _PatchJob(file, annotation)
        for target, entity in targets_of_patch(annotation, file):
            if selected is not None and target.uid not in selected:
                continue
            if has_llm_expressions(entity) and not self.options.redo:
                self.summary.already_done += 1
            elif self._reusable(self.previous.get(target.uid), target):
                job.answers.append((target, self.previous[target.uid]))
                self.summary.merged_from_ledger += 1
            else:
                job.todo.append(target)
        return job

    def select_sample(self, files: list[AnnotationFile]) -> set[str]:
        """uids of a stratified sample of ``options.sample`` targets that still need answers."""
        targets = [
            target
            for file in files
            for target, entity in targets_of_patch(file.read(), file)
            if self.options.redo or not has_llm_expressions(entity)
        ]
        chosen = stratified_sample(targets, self.options.sample or 0, self.options.sample_seed)
        return {target.uid for target in chosen}

    # ---------------------------------------------------------------- requests

    def _record(self, target: EnhanceTarget, status: str, attempts: list, **extra) -> dict:
        return {
            "uid": target.uid,
            "annotation": target.annotation,
            "kind": target.kind,
            "category": target.category_text,
            "status": status,
            "model": self.config.backend.model,
            "prompt_version": self.version,
            "originals": [[o.id, o.text] for o in target.originals],
            "attempts": attempts,
            "finished": iso_time(time.time()),
            **extra,
        }

    async def _answer(self, target: EnhanceTarget) -> dict | None:
        """Resolve one target to a ledger record (``None``: offline and nothing cached).

        Samples 0, 1, ... are tried in order; cached ones cost nothing and are validated again, so
        a re-run continues after the samples an earlier run found invalid.
        """
        config = self.config
        try:
            images = await asyncio.to_thread(render_enhance_target, target, config.render)
        except RenderError as exc:
            return self._record(target, "failed", [], reason="render_error", detail=str(exc))
        prompt = build_prompt(target, images.mode, config)
        messages = openai_messages(prompt, images)
        attempts: list[dict] = []
        last: InvalidAnswer | None = None
        new_requests = 0
        for sample in range(config.queue.sample_budget):
            body = chat_request_body(config, messages, len(target.originals), sample)
            key = request_key(body, config.backend.base_url, sample)
            entry = self.cache.get(key)
            cached = entry is not None
            transport: Counter = Counter()
            if entry is None:
                if self.options.offline:
                    if sample == 0 and key in self.batch_failures:
                        return self._batch_failure(target, key)
                    break
                if sample == 0 and key in self.batch_pending:
                    self.summary.awaiting_batch += 1
                    return None
                if new_requests > config.queue.max_resamples:
                    break  # this run's re-samples are spent; a re-run continues from here
                try:
                    completion = await send_chat(self.client, body, config, self._rng, transport)
                except TransportFailure as failure:
                    self._lost_to_transport(failure)
                    attempt = {"key": key, "sample": sample, "error": failure.reason}
                    transport[failure.reason] -= 1  # the final error is `error`
                    if +transport:
                        attempt["transport_errors"] = dict(+transport)
                    attempts.append(attempt)
                    return self._record(
                        target, "failed", attempts, reason=failure.reason, detail=str(failure)
                    )
                self._transport_losses = 0
                new_requests += 1
                self.summary.requests_sent += 1
                entry = self.cache.put(key, completion.model_dump(mode="json"), "api")
            else:
                self.summary.cache_hits += 1
            response = entry["response"]
            content, finish_reason, refusal = _message(response)
            usage = _usage(response)
            self.summary.prompt_tokens += usage["prompt_tokens"]
            self.summary.completion_tokens += usage["completion_tokens"]
            attempt = {
                "key": key,
                "sample": sample,
                "cached": cached,
                "origin": entry["origin"],
                "finish_reason": finish_reason,
                "usage": usage,
            }
            if transport:  # errors retried before this answer (timeouts may have been billed)
                attempt["transport_errors"] = dict(transport)
            attempts.append(attempt)
            try:
                if refusal and not content:
                    raise InvalidAnswer("refusal", str(refusal)[:300])
                answer = validate_answer(
                    content, target.originals, config.validation, finish_reason
                )
            except InvalidAnswer as exc:
                attempt.update(reason=exc.reason, detail=exc.detail[:300])
                last = exc
                continue
            return self._record(
                target,
                "ok",
                attempts,
                served_model=response.get("model"),
                time=iso_time(entry["created"]),
                source_ids=answer.source_ids(),
                result=answer.to_dict(),
            )
        if last is None:
            return None
        budget = config.queue.sample_budget
        if len(attempts) >= budget:
            note = f"all {budget} samples of queue.sample_budget were invalid"
        elif self.options.offline:
            note = "offline: re-run `llm enhance` online to re-sample"
        else:
            note = f"{len(attempts)} of {budget} samples used; a re-run asks for new ones"
        return self._record(
            target, "failed", attempts, reason=last.reason, detail=f"{last.detail} ({note})"
        )

    def _batch_failure(self, target: EnhanceTarget, key: str) -> dict:
        reason = self.batch_failures[key]
        attempt = {"key": key, "sample": 0, "origin": "batch", "error": reason}
        previous = (self.previous or {}).get(target.uid)
        if previous and previous["status"] == "failed" and previous["attempts"] == [attempt]:
            return previous  # recorded by an earlier collect: not appended again
        detail = (
            "the Batch API returned no answer for this request (see batch/errors.jsonl); "
            "`llm batch prepare` or `llm enhance` requests it again"
        )
        return self._record(target, "failed", [attempt], reason=reason, detail=detail)

    def _lost_to_transport(self, failure: TransportFailure) -> None:
        self._transport_losses += 1
        if self._transport_losses >= self.config.queue.abort_after_failures:
            raise FatalBackendError(
                f"{self._transport_losses} targets in a row were lost to transport errors (last: "
                f"{failure}); is the server at {self.config.backend.base_url or 'OpenAI'} up? "
                "Finished targets are saved; re-run to resume."
            )

    # ---------------------------------------------------------------- writing

    def _write(self, job: _PatchJob) -> bool:
        """Merge the job's answers and rewrite its file; ``False`` when nothing had to change."""
        if job.answers:
            merge_answers(job.annotation, job.answers)
        elif job.file.output.is_file():
            return False
        write_patch_xml(job.annotation, job.file.output)
        return True

    async def _finish(self, job: _PatchJob) -> None:
        if await asyncio.to_thread(self._write, job):
            self.summary.files_written += 1
        if self._progress is not None:
            self._progress.update(1)
            self._progress.set_postfix(ok=self.summary.ok, failed=self.summary.failed)

    def _resolve(self, job: _PatchJob, target: EnhanceTarget, record: dict | None) -> None:
        if record is None:
            self.summary.not_collected += 1
        else:
            if record is not (self.previous or {}).get(target.uid):
                self.ledger.append(record)
            if record["status"] == "ok":
                self.summary.ok += 1
                job.answers.append((target, record))
            else:
                self.summary.failed += 1
                self.summary.failure_reasons[record["reason"]] += 1
        job.pending -= 1

    # ---------------------------------------------------------------- the run

    async def _worker(self, queue: asyncio.Queue) -> None:
        while (item := await queue.get()) is not None:
            job, target = item
            record = await self._answer(target)
            self._resolve(job, target, record)
            if job.pending == 0:
                await self._finish(job)

    async def _produce(self, files: list[AnnotationFile], queue: asyncio.Queue) -> None:
        selected = (
            await asyncio.to_thread(self.select_sample, files)
            if self.options.sample is not None
            else None
        )
        limit = self.options.limit
        for file in files:
            job = await asyncio.to_thread(self.plan, file, selected)
            if limit is not None:
                job.todo = job.todo[: max(0, limit - self._enqueued)]
            self._enqueued += len(job.todo)
            job.pending = len(job.todo)
            if not job.todo:
                await self._finish(job)
                continue
            for target in job.todo:
                await queue.put((job, target))
        for _ in range(self.config.queue.concurrency):
            await queue.put(None)

    async def run(self, files: list[AnnotationFile]) -> RunSummary:
        started = time.time()
        own_client = self.client is None and not self.options.offline
        if own_client:
            self.client = make_async_client(self.config.backend)
        self.previous = self.ledger.latest()
        if not self.options.offline:
            self.batch_pending = pending_keys(load_batch_state(self.work_dir))
        for annotation_file in files:  # a killed run may have left half-written temp files
            remove_stale_temp_files(annotation_file.output)
        self.summary.files = len(files)
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self.config.queue.concurrency)
        if self.options.progress:
            from tqdm import tqdm

            self._progress = tqdm(total=len(files), unit="file", desc="llm enhance")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce(files, queue))
                for _ in range(self.config.queue.concurrency):
                    group.create_task(self._worker(queue))
        except ExceptionGroup as errors:
            # One clear error (the first), not a traceback tree; finished targets are in the ledger.
            raise errors.exceptions[0] from None
        finally:
            self.ledger.close()
            if self._progress is not None:
                self._progress.close()
            if own_client:
                await self.client.close()
            self.summary.wall_s = time.time() - started
            self._log_run(started)
        return self.summary

    def _log_run(self, started: float) -> None:
        entry = {
            "started": iso_time(started),
            "model": self.config.backend.model,
            "base_url": self.config.backend.base_url,
            "prompt_version": self.version,
            "options": asdict(self.options),
            "summary": self.summary.to_dict(),
        }
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with (self.work_dir / "runs.jsonl").open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(entry) + "\n")


def enhance(
    config: EnhanceConfig,
    files: list[AnnotationFile],
    work_dir: str | Path,
    options: RunOptions | None = None,
    client: Any = None,
) -> RunSummary:
    """Run :class:`EnhanceRunner` to completion (blocking)."""
    return asyncio.run(EnhanceRunner(config, work_dir, options, client).run(files))
