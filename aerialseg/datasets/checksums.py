"""SHA-256 checksums of dataset files and of the samples a loader produced.

Used by the benchmark-table provenance (``tools/test.py``) and by ``tools/check_dataset.py``, so
a table and a data check name the same digest for the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from collections.abc import Iterable, Sequence

__all__ = ["SAMPLE_DIGEST_KEYS", "file_sha256", "files_digest", "samples_digest"]

SAMPLE_DIGEST_KEYS = (
    "dataset_name",
    "img_id",
    "target_id",
    "expr_id",
    "text",
    "expr_type",
    "target_type",
    "category",
    "subset",
)
# (real path, size, mtime_ns) -> digest: clean and historic copies of a test set, and several
# checkpoints evaluated on it, hash its files once per process.
_FILE_DIGESTS: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks; cached while the file is unchanged)."""
    stat = os.stat(path)
    key = (osp.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def files_digest(paths: Iterable[str], root: str = "") -> str:
    """One SHA-256 over several files: of the sorted lines ``<path relative to root>\\t<sha256>``.

    Paths are taken relative to ``root`` so that moving a dataset folder keeps its digest, while
    renaming, adding or dropping a file, or changing one byte, changes it.
    """
    lines = sorted(
        f"{osp.relpath(path, root or os.curdir).replace(os.sep, '/')}\t{file_sha256(path)}"
        for path in set(paths)
    )
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def samples_digest(samples: Sequence[dict]) -> str:
    """SHA-256 of the samples' ids, expressions and types (in order), as JSON lines.

    It changes when a loader reads another text field (``raw`` vs ``sent``), skips other
    sentences, or orders samples differently, even if the files are the same.
    """
    digest = hashlib.sha256()
    for sample in samples:
        record = [str(sample.get(key, "")) for key in SAMPLE_DIGEST_KEYS]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()
