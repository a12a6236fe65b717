"""Resumable stages: a journal of finished units, a configuration fingerprint, a skip report.

Layout under ``<work_dir>/.state/<stage>/``: ``fingerprint`` (hash of everything that decides the
stage's outputs), ``journal.jsonl`` (one line per finished unit, appended by the main process
only after the unit's files were moved into place) and ``complete.json``. A killed stage
restarts with the units missing from the journal; outputs are named from their inputs, so a
redone unit overwrites its own files and nothing is duplicated. Units whose recorded files have
gone missing are redone as well.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from datagen.config import PipelineConfig
from datagen.parallel import WorkUnit, map_units
from datagen.storage import atomic_write_bytes, atomic_write_json, remove_temp_files

__all__ = ["StageError", "StageState", "require_complete", "run_units", "summarize", "write_report"]

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
                    "configuration or different inputs; pass --overwrite to discard its results, "
                    "or use another work_dir"
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
        """Finished units; a line cut by a kill (the last one) is ignored."""
        done: dict[str, dict] = {}
        if not self.journal_path.is_file():
            return done
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["key"]] = entry["result"]
        return done

    def record(self, stream, key: str, result: dict) -> None:
        stream.write(json.dumps({"key": key, "result": result}, separators=(",", ":")) + "\n")
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
    """Run ``fn`` on every unit not yet journaled; return all results keyed and sorted by key.

    ``result['outputs']`` (paths relative to the work dir) are checked on resume.
    """
    state.open(overwrite)
    state.clear_complete()
    keys = {key for key, _ in units}
    if len(keys) != len(units):
        raise ValueError(f"stage '{state.stage}': duplicate unit keys")
    done = {
        key: result
        for key, result in state.load_journal().items()
        if key in keys and _outputs_present(state.work_dir, result)
    }
    todo = [u for u in units if u[0] not in done]
    results = dict(done)
    with open(state.journal_path, "a", encoding="utf-8") as journal:
        for key, result in map_units(
            fn,
            todo,
            workers=cfg.workers,
            desc=desc,
            unit=unit,
            chunksize=cfg.chunksize,
            progress=cfg.progress,
            min_units_per_worker=min_units_per_worker,
        ):
            state.record(journal, key, result)
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
