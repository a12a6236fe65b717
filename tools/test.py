"""Evaluate a checkpoint and write the benchmark tables: ``python tools/test.py CONFIG CHECKPOINT
[--work-dir D] [--out DIR] [--historic] [--cfg-options k=v ...]
[--launcher {none,pytorch,slurm,mpi}]``.

Tables (Markdown, CSV, JSON) go to the work dir; see ``aerialseg.evaluation.test_runner``."""

from aerialseg.evaluation import test_main

if __name__ == "__main__":
    test_main()
