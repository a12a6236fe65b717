"""The state of the Batch API path (``<work>/batch/state.json``), read by ``llm batch``, by
``llm enhance`` (not to pay twice for requests a batch may still answer) and by ``llm report``.

The file holds ``{"parts": [...]}``, one entry per ``input-NNNN.jsonl``: its request ``keys`` and
``uids`` (same order), and once submitted and polled its ``batch_id``, ``status``, file ids,
``collected`` and ``failures`` (request key → ``batch_*`` reason of every line that got no answer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aerialformats.atomic import atomic_write_text


class BatchStateError(RuntimeError):
    """The batch folder is missing or its state file is unreadable."""


def state_path(work_dir: str | Path) -> Path:
    return Path(work_dir) / "batch" / "state.json"


def load_batch_state(work_dir: str | Path) -> dict[str, Any]:
    path = state_path(work_dir)
    if not path.is_file():
        return {"parts": []}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BatchStateError(f"{path}: unreadable batch state ({exc})") from None


def save_batch_state(work_dir: str | Path, state: dict[str, Any]) -> None:
    atomic_write_text(state_path(work_dir), json.dumps(state, indent=2))


def awaiting_collect(part: dict[str, Any]) -> bool:
    """Whether a part's answers may still arrive: until ``collect`` has read it, its keys are in
    flight, even when the batch is dead (an expired batch still has the answers it finished)."""
    return not part.get("collected")


def pending_keys(state: dict[str, Any]) -> set[str]:
    """Request keys in parts that ``collect`` has not read yet."""
    return {key for part in state["parts"] if awaiting_collect(part) for key in part["keys"]}


def batch_failures(state: dict[str, Any]) -> dict[str, str]:
    """``key → reason`` of lines that collected parts got no answer for, minus keys that a part
    still awaiting collection holds again (re-batched after the failure)."""
    pending = pending_keys(state)
    failures: dict[str, str] = {}
    for part in state["parts"]:
        if not awaiting_collect(part):
            failures.update(part.get("failures") or {})
    return {key: reason for key, reason in failures.items() if key not in pending}
