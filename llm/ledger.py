"""Per-target job ledger: an append-only JSONL file, one record per finished target.

A record is written (and flushed) as soon as a target is resolved (``ok`` with its validated
answer, or ``failed`` with the reason), before its annotation file is rewritten, so a killed run
loses no paid answer: the next run merges ``ok`` records without a request and retries ``failed``
ones. The last record of a uid wins. A torn last line from a kill is skipped.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Ledger:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stream = None

    def records(self) -> Iterator[dict[str, Any]]:
        """All readable records, oldest first."""
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    warnings.warn(
                        f"{self.path}:{number}: skipping an unreadable (torn) record", stacklevel=2
                    )
                    continue
                yield record

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every uid."""
        return {record["uid"]: record for record in self.records() if "uid" in record}

    def append(self, record: dict[str, Any]) -> None:
        if self._stream is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_newline()
            self._stream = self.path.open("a", encoding="utf-8")
            if torn:  # a kill cut the last record: start on a fresh line
                self._stream.write("\n")
        self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        # Flushed to the OS per record, so a killed run loses nothing; fsync (slow: it would stall
        # the event loop for milliseconds per record) only at close.
        self._stream.flush()

    def _ends_newline(self) -> bool:
        with self.path.open("rb") as stream:
            stream.seek(-1, os.SEEK_END)
            return stream.read(1) == b"\n"

    def close(self) -> None:
        if self._stream is not None:
            os.fsync(self._stream.fileno())
            self._stream.close()
            self._stream = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
