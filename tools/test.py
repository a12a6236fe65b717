"""Evaluate checkpoints and write the benchmark tables: ``python tools/test.py CONFIG CHECKPOINT
[CHECKPOINT|GLOB ...] [--work-dir D] [--out DIR] [--historic] [--protocol NAME]
[--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]``.

Tables (Markdown, CSV, JSON, each row with its provenance; with several checkpoints per-run rows
and mean ± std) go to the work dir; see ``aerialseg.evaluation.test_runner`` and
docs/evaluation.md."""

from aerialseg.evaluation import test_main

if __name__ == "__main__":
    test_main()
