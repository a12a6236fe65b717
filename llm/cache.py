"""Content-addressed response cache: sha256(request) → the server's answer, one JSON file each.

The key hashes the canonical JSON of the full request body (model, messages with the base64
images, sampling parameters with the per-sample seed, response format) and the server's base URL,
so any change to prompt, images, model or sampling makes a new key and a re-run with nothing
changed sends no request. Every entry is an answer that was paid for once (``origin`` ``api`` or
``batch``), which is what ``llm report`` prices. Files are written atomically (temp + replace);
an unreadable entry counts as a miss and is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aerialformats.atomic import atomic_write_text


def request_key(body: dict[str, Any], base_url: str | None, sample: int = 0) -> str:
    """The cache key of a request. ``sample`` k > 0 enters the key only when the body has no
    ``seed`` (``sampling.seed: null``): the bodies of all samples are then identical, and without
    it a re-sample would find the cached (invalid) first answer instead of asking again."""
    keyed: dict[str, Any] = {"base_url": base_url or "openai", "body": body}
    if sample and "seed" not in body:
        keyed["sample"] = sample
    canonical = json.dumps(
        keyed,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """``<root>/<key[:2]>/<key>.json`` holding ``{key, origin, created, response}``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry.get("key") != key or "response" not in entry:
                raise ValueError("wrong key or no response")
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring unreadable cache entry {path}: {exc}", stacklevel=2)
            return None
        return entry

    def put(self, key: str, response: dict[str, Any], origin: str) -> dict[str, Any]:
        """Store ``response`` (the chat-completion JSON) and return the stored entry."""
        entry = {"key": key, "origin": origin, "created": time.time(), "response": response}
        atomic_write_text(self._path(key), json.dumps(entry, ensure_ascii=False))
        return entry

    def __contains__(self, key: str) -> bool:
        return self._path(key).is_file()

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every readable entry (for cost accounting)."""
        for path in sorted(self.root.glob("*/*.json")):
            try:
                yield json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
