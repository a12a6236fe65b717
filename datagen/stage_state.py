"""Resumable stages: a journal of finished units, fingerprints, a skip report.

Layout under ``<work_dir>/.state/<stage>/``: ``fingerprint`` (hash of the stage's configuration
and of its upstream stages' configurations), ``journal.jsonl`` (one line per finished unit,
appended by the main process only after the unit's files were moved into place) and
``complete.json``. A killed stage restarts with the units missing from the journal; outputs are
named from their inputs, so a redone unit overwrites its own files and nothing is duplicated.

A unit is also redone when what it reads changed since it ran: units may declare their inputs
(:func:`unit_inputs`): the records they are given (hashed in the main process) and the files
they read. The journal keeps each file's ``(size, mtime_ns, content digest)``; on resume an
unchanged size and mtime is trusted (as ``git status`` does), otherwise the file is hashed again
and only a different content redoes the unit. So editing one polygon redoes one source image;
its patches are rewritten byte for byte where nothing changed, and the later stages redo only
the patches whose content did change. Outputs of units that no longer exist are deleted, and so
are files a redone unit no longer produces. Units whose recorded files have gone missing are
redone as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from datagen.config import PipelineConfig
from datagen.parallel import WorkUnit, map_units
from datagen.storage import InputError, atomic_write_bytes, atomic_write_json, remove_temp_files

__all__ = [
    "INPUTS_KEY",
    "StageError",
    "StageState",
    "file_digest",
    "file_identity",
    "records_digest",
    "require_complete",
    "run_units",
    "summarize",
    "unit_inputs",
    "write_report",
]

# Payload key of a unit's declared inputs (see unit_inputs); run_units strips it before the call.
INPUTS_KEY = "_inputs"
_HASH_BLOCK = 1 << 20

MAX_REPORTED_MESSAGES = 50


class StageError(RuntimeError):
    """A stage cannot run: an upstream stage is unfinished or the work dir holds other results."""


class StageState:
    """Journal and fingerprint of one stage in one work dir."""

    def __init__(self, work_dir: Path, stage: str, fingerprint: str, outputs: Sequence[Path] = ()):
        self.work_dir = Path(work_dir)
        self.stage = stage
        self.fingerprint = fingerprint
        self.outputs = [Path(p) for p in outputs]
        self.folder = self.work_dir / ".state" / stage
        self.journal_path = self.folder / "journal.jsonl"

    def open(self, overwrite: bool = False) -> None:
        """Check the fingerprint; with ``overwrite`` discard a stale state and its outputs.

        Raises:
            StageError: the work dir holds this stage's results for another configuration.
        """
        stored = self.folder / "fingerprint"
        if stored.is_file() and stored.read_text().strip() != self.fingerprint:
            if not overwrite:
                raise StageError(
                    f"stage '{self.stage}' in '{self.work_dir}' was run with a different "
                    "configuration; pass --overwrite to discard its results, or use another "
                    "work_dir"
                )
            self.discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not stored.is_file():
            atomic_write_bytes(stored, self.fingerprint.encode())
        for output in self.outputs:
            remove_temp_files(output)

    def discard(self) -> None:
        for path in [self.folder, *self.outputs]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def load_journal(self) -> dict[str, dict]:
        """Finished units, the last line per key; a line cut by a kill (the last one) is ignored.

        Each entry is ``{'key', 'result', 'inputs'}`` (``inputs`` as recorded by run_units).
        """
        done: dict[str, dict] = {}
        if not self.journal_path.is_file():
            return done
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["key"]] = entry
        return done

    def record(self, stream, key: str, result: dict, inputs: dict | None = None) -> None:
        entry = {"key": key, "result": result, "inputs": inputs}
        stream.write(json.dumps(entry, separators=(",", ":")) + "\n")
        stream.flush()

    def is_complete(self) -> bool:
        return (self.folder / "complete.json").is_file() and (
            (self.folder / "fingerprint").is_file()
            and (self.folder / "fingerprint").read_text().strip() == self.fingerprint
        )

    def mark_complete(self, summary: dict) -> None:
        atomic_write_json(self.folder / "complete.json", summary, indent=2)

    def clear_complete(self) -> None:
        (self.folder / "complete.json").unlink(missing_ok=True)


def require_complete(work_dir: Path, stage: str) -> None:
    if not (Path(work_dir) / ".state" / stage / "complete.json").is_file():
        raise StageError(
            f"stage '{stage}' has not finished in '{work_dir}'; run it first "
            f"(python -m datagen {stage} ...) or use `python -m datagen run`"
        )


def _outputs_present(root: Path, result: dict) -> bool:
    return all((root / rel).exists() for rel in result.get("outputs", ()))


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes, read in 1 MiB blocks (a change detector, not a security check)."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_identity(path: str | os.PathLike, content: bool = True) -> list | None:
    """``[size, mtime_ns, digest]`` of a file (digest None unless ``content``), None if absent.

    The stat is taken before hashing: a file replaced meanwhile looks changed next time, never
    unchanged.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns, file_digest(path) if content else None]


def records_digest(records) -> str:
    """Digest of JSON-serialisable records (key order does not matter)."""
    text = json.dumps(records, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def unit_inputs(
    sources: Sequence[str | os.PathLike] = (),
    produced: Sequence[str | os.PathLike] = (),
    records=None,
) -> dict:
    """Declare what a unit reads: put the result under ``payload[INPUTS_KEY]``.

    Args:
        sources: source files (images, masks) the unit reads: identified by size, mtime and
            content digest, so a touched but unchanged file does not redo the unit.
        produced: files an earlier stage wrote: identified by size and mtime only (no hashing
            cost in the chain), exact because the stages never rewrite a file with the same
            bytes (``keep_identical``).
        records: the data the unit is given in its payload (e.g. the source annotations of an
            image); hashed here, in the main process.
    """
    files = {str(f): True for f in sources}
    files.update({str(f): False for f in produced})
    return {"files": files, "records": None if records is None else records_digest(records)}


def _current_identity(path: str, recorded: list | None) -> list | None | bool:
    """The file's identity if its content is unchanged since ``recorded``, else False.

    An unchanged size and mtime is trusted; otherwise a recorded digest decides (the returned
    identity then carries the new stat, so the next resume need not hash again).
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None if recorded is None else False
    if recorded is None:
        return False
    current = [stat.st_size, stat.st_mtime_ns]
    if current == recorded[:2]:
        return recorded
    if recorded[2] is not None and file_digest(path) == recorded[2]:
        return [*current, recorded[2]]
    return False


def _unchanged_inputs(declared: dict | None, recorded: dict | None) -> dict | None | bool:
    """The inputs as they are now if a unit's declared inputs did not change, else False."""
    if declared is None:
        return recorded
    if recorded is None or declared["records"] != recorded.get("records"):
        return False
    files = recorded.get("files", {})
    if sorted(files) != sorted(declared["files"]):
        return False
    current = {}
    for path in declared["files"]:
        identity = _current_identity(path, files[path])
        if identity is False:
            return False
        current[path] = identity
    return {"records": declared["records"], "files": current}


def _identified_call(task: tuple[Callable[[object], dict], object, dict | None]) -> dict:
    """Run a unit and return its result with the identities of the files it read.

    The identities are taken before the unit reads the files (a change meanwhile redoes the unit
    next time); a unit skipped for bad input still records them, so fixing the file redoes it.
    """
    fn, payload, declared = task
    inputs = None
    if declared is not None:
        inputs = {
            "records": declared["records"],
            "files": {
                path: file_identity(path, content) for path, content in declared["files"].items()
            },
        }
    try:
        result = fn(payload)
    except InputError as exc:
        result = {"skipped": exc.reason, "message": str(exc)}
    return {"result": result, "inputs": inputs}


def _remove_outputs(root: Path, outputs, keep=()) -> None:
    keep = set(keep)
    for rel in outputs:
        if rel not in keep:
            (root / rel).unlink(missing_ok=True)


def run_units(
    state: StageState,
    cfg: PipelineConfig,
    units: Sequence[WorkUnit],
    fn: Callable[[object], dict],
    *,
    desc: str,
    unit: str,
    overwrite: bool = False,
    min_units_per_worker: int = 1,
) -> dict[str, dict]:
    """Run ``fn`` on every unit not finished with its current inputs; return all results keyed
    and sorted by key.

    A unit is finished when the journal holds it, its ``result['outputs']`` (paths relative to
    the work dir) exist, and the inputs it declared under ``payload[INPUTS_KEY]``
    (:func:`unit_inputs`) are unchanged since it ran.
    """
    state.open(overwrite)
    state.clear_complete()
    keys = {key for key, _ in units}
    if len(keys) != len(units):
        raise ValueError(f"stage '{state.stage}': duplicate unit keys")
    journal_entries = state.load_journal()
    for key, entry in journal_entries.items():
        if key not in keys:  # the unit's input is gone: so are its outputs
            _remove_outputs(state.work_dir, entry["result"].get("outputs", ()))
    results: dict[str, dict] = {}
    todo = []
    refreshed = []  # finished units whose files were touched but hold the same content
    for key, payload in units:
        declared = payload.pop(INPUTS_KEY, None) if isinstance(payload, dict) else None
        entry = journal_entries.get(key)
        inputs = False
        if entry is not None and _outputs_present(state.work_dir, entry["result"]):
            inputs = _unchanged_inputs(declared, entry.get("inputs"))
        if inputs is False:
            todo.append((key, (fn, payload, declared)))
            continue
        results[key] = entry["result"]
        if inputs != entry.get("inputs"):
            refreshed.append((key, entry["result"], inputs))
    with open(state.journal_path, "a", encoding="utf-8") as journal:
        for key, result, inputs in refreshed:
            state.record(journal, key, result, inputs)
        for key, answer in map_units(
            _identified_call,
            todo,
            workers=cfg.workers,
            desc=desc,
            unit=unit,
            chunksize=cfg.chunksize,
            progress=cfg.progress,
            min_units_per_worker=min_units_per_worker,
        ):
            result = answer["result"]
            if key in journal_entries:  # redone: files it no longer writes are stale
                _remove_outputs(
                    state.work_dir,
                    journal_entries[key]["result"].get("outputs", ()),
                    keep=result.get("outputs", ()),
                )
            state.record(journal, key, result, answer["inputs"])
            results[key] = result
    return {key: results[key] for key in sorted(results)}


def summarize(stage: str, results: dict[str, dict], extra: dict | None = None) -> dict:
    """Aggregate per-unit results into the stage report (counts, skips by reason, messages)."""
    skips: Counter = Counter()
    counts: Counter = Counter()
    messages: list[str] = []
    for result in results.values():
        if "skipped" in result:
            skips[result["skipped"]] += 1
        for reason, count in result.get("skips", {}).items():
            skips[reason] += count
        for name, value in result.get("counts", {}).items():
            counts[name] += value
        for message in [result.get("message"), *result.get("messages", ())]:
            if message and len(messages) < MAX_REPORTED_MESSAGES:
                messages.append(message)
    report = {
        "stage": stage,
        "units": len(results),
        "units_skipped": sum(1 for r in results.values() if "skipped" in r),
        "counts": dict(sorted(counts.items())),
        "skips": dict(sorted(skips.items())),
        "messages": messages,
    }
    report.update(extra or {})
    return report


def write_report(work_dir: Path, report: dict) -> Path:
    return atomic_write_json(
        Path(work_dir) / "reports" / f"{report['stage']}.json", report, indent=2
    )


def complete_stage(state: StageState, results: dict[str, dict], extra: dict | None = None) -> dict:
    """Summarize ``results`` into the stage report, write it and mark the stage complete."""
    report = summarize(state.stage, results, extra)
    write_report(state.work_dir, report)
    state.mark_complete(report)
    return report
