"""Check a dataset's files, per-split counts and checksums, and print a per-category summary:
``python tools/check_dataset.py CONFIG [--splits S ...] [--manifest FILE] [--write-manifest FILE]
[--no-published-counts] [--cfg-options k=v ...]``. Exit status 1 when a check fails.

See ``aerialseg.datasets.check`` and docs/datasets.md."""

import sys

from aerialseg.datasets.check import check_dataset_main

if __name__ == "__main__":
    sys.exit(check_dataset_main())
