"""Finished results kept in memory for download, bounded by count and bytes.

Downloads are looked up by a random result id and an exact file name from the result's own table,
never joined into a filesystem path, so no request can reach a file it was not given.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict

RESULT_ID = re.compile(r"^[0-9a-f]{32}$")


class ResultStore:
    """Thread-safe LRU store: ``result id -> {file name: bytes}``."""

    def __init__(self, max_results: int, max_bytes: int) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self._results: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, files: dict[str, bytes]) -> str:
        """Store ``files`` and return their new result id (oldest results make room)."""
        result_id = secrets.token_hex(16)
        size = sum(len(data) for data in files.values())
        with self._lock:
            self._results[result_id] = dict(files)
            self._bytes += size
            while len(self._results) > 1 and (
                len(self._results) > self.max_results or self._bytes > self.max_bytes
            ):
                _, dropped = self._results.popitem(last=False)
                self._bytes -= sum(len(data) for data in dropped.values())
        return result_id

    def get(self, result_id: str, name: str) -> bytes | None:
        """The bytes of ``name`` in result ``result_id``, or ``None`` if either is unknown."""
        if not RESULT_ID.match(result_id):
            return None
        with self._lock:
            files = self._results.get(result_id)
            if files is None:
                return None
            self._results.move_to_end(result_id)
            return files.get(name)

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)
