"""Mutation testing of the core modules with mutmut 3, each module against its own test files.

``make mutation`` (or ``python tools/mutation.py [MODULE ...]``) runs, for every module of
:data:`MODULES`, ``mutmut run`` in its own work folder ``work_dirs/mutation/<module>/``: the folder
links the packages, tests and configs, and its ``pyproject.toml`` is the repository's with a
``[tool.mutmut]`` table that mutates only that module's files and selects only its test files
(the shared settings come from the repository's own ``[tool.mutmut]``). mutmut copies the sources
into ``mutants/``, runs the selected tests once to learn which test reaches which function, then
runs, per mutant, only the tests that reach the mutated function.

It prints one row per module (killed / total, survivors, mutants without tests, timeouts) and
writes the rows and every survivor's name to ``work_dirs/mutation/summary.json``. Results are
cached by mutmut: a second run re-tests only mutants whose function changed (``--fresh`` starts
over). ``mutmut show NAME`` in a module's folder prints the diff of one survivor.

Mutant counts: killed = the tests failed (or timed out) with the mutant in place; survived = they
passed; no tests = no selected test reaches the function.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "work_dirs" / "mutation"
# What a module's work folder links to (the tests read configs/ through their own path).
LINKED = ("aerialseg", "aerialformats", "datagen", "llm", "configs", "tests")


@dataclass(frozen=True)
class Module:
    """A mutation target: ``files`` to mutate (globs) and the ``tests`` that own them (pytest
    paths and selection options)."""

    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]


MODULES = (
    Module(
        "metrics",
        ("aerialseg/evaluation/metrics/*.py",),
        (
            "tests/evaluation/test_referring_metric.py",
            "tests/evaluation/test_referee_metric.py",
            "tests/evaluation/test_metric_errors.py",
            "tests/evaluation/test_protocols.py",
        ),
    ),
    Module(
        "masks",
        ("aerialseg/datasets/masks.py",),
        ("tests/datasets/test_referee_masks.py", "tests/datasets/test_datasets.py"),
    ),
    Module(
        "refer_io",
        ("aerialseg/datasets/refer_io.py",),
        (
            "tests/datasets/test_refer_errors.py",
            "tests/datasets/test_datasets.py",
            "tests/datasets/test_referee_refer.py",
        ),
    ),
    Module(
        "rrsisd",
        ("aerialseg/datasets/rrsisd.py",),
        ("tests/datasets/test_datasets.py", "tests/datasets/test_referee_refer.py"),
    ),
    Module("refsegrs", ("aerialseg/datasets/refsegrs.py",), ("tests/datasets/test_datasets.py",)),
    Module(
        "nwpu_refer", ("aerialseg/datasets/nwpu_refer.py",), ("tests/datasets/test_datasets.py",)
    ),
    Module("urban1960", ("aerialseg/datasets/urban1960.py",), ("tests/datasets/test_datasets.py",)),
    Module(
        "aerial_d",
        # The XML format lives in aerialformats; aerialseg's aerial_d_format only re-exports it.
        ("aerialseg/datasets/aerial_d.py", "aerialformats/aerial_d.py"),
        ("tests/datasets/test_aerial_d_format.py", "tests/datasets/test_datasets.py"),
    ),
    Module(
        "prompter",
        ("aerialseg/models/prompter.py",),
        ("tests/models/test_referee_prompter.py",),
    ),
    Module(
        "siglip",
        ("aerialseg/models/siglip.py",),
        ("tests/models/test_referee_siglip_input.py", "tests/models/test_clipsam.py"),
    ),
    Module(
        "sam",
        ("aerialseg/models/sam.py",),
        ("tests/models/test_referee_sam.py", "tests/models/test_clipsam.py"),
    ),
    Module(
        "data_preprocessor",
        ("aerialseg/models/data_preprocessor.py",),
        (
            "tests/models/test_referee_siglip_input.py",
            "tests/models/test_referee_sam.py",
            "tests/models/test_clipsam.py",
        ),
    ),
    Module(
        "clipsam",
        ("aerialseg/models/clipsam.py",),
        ("tests/models/test_clipsam.py", "tests/models/test_referee_prompter.py"),
    ),
    Module(
        "checkpoint",
        ("aerialseg/engine/checkpoint.py",),
        (
            "tests/foundation/test_safe_checkpoint.py",
            # It scans the sources for unsafe checkpoint loading, which mutmut's copies hold.
            "--deselect=tests/foundation/test_safe_checkpoint.py::"
            "test_no_code_loads_checkpoints_with_weights_only_false",
            # It needs a fresh process (torch's allow-list is global); mutmut reruns in one.
            "--deselect=tests/foundation/test_safe_checkpoint.py::"
            "test_allow_checkpoint_globals_admits_a_trusted_class",
        ),
    ),
    Module("rules", ("datagen/rules.py",), ("tests/datagen/test_rules.py",)),
    Module("uniqueness", ("datagen/uniqueness.py",), ("tests/datagen/test_uniqueness.py",)),
    Module(
        "expressions",
        ("datagen/expressions.py",),
        ("tests/datagen/test_rules.py", "tests/datagen/test_uniqueness.py"),
    ),
    Module(
        "llm_schema",
        ("llm/schema.py",),
        (
            "tests/llm/test_llm_schema.py",
            "tests/llm/test_schema_errors.py",
            "tests/llm/test_loopback_validation.py",
        ),
    ),
    Module(
        "llm_backend",
        ("llm/backend.py",),
        ("tests/llm/test_backend_errors.py", "tests/llm/test_llm_enhance.py"),
    ),
    Module(
        "llm_cache",
        ("llm/cache.py",),
        (
            "tests/llm/test_cache_errors.py",
            "tests/llm/test_llm_enhance.py",
            "tests/llm/test_batch_errors.py",
        ),
    ),
    Module(
        "llm_batch",
        ("llm/batch.py",),
        ("tests/llm/test_llm_batch_report.py", "tests/llm/test_batch_errors.py"),
    ),
)
KILLED_CODES = {1, 3, 24, -24, 152, 255, 36}  # tests failed, or the mutant timed out
SURVIVED_CODES = {0}
NO_TEST_CODES = {5, 33}


def mutmut_settings() -> dict:
    """The repository's shared ``[tool.mutmut]`` settings."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data.get("tool", {}).get("mutmut", {}))


def _toml_value(value) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are valid TOML


def module_pyproject(module: Module) -> str:
    """The repository's pyproject with a ``[tool.mutmut]`` table for ``module`` only."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    settings = mutmut_settings()
    settings.update(
        source_paths=sorted({pattern.split("/")[0] for pattern in module.files}),
        only_mutate=list(module.files),
        also_copy=sorted({*settings.get("also_copy", []), "configs"}),
        pytest_add_cli_args_test_selection=list(module.tests),
    )
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    return text.rstrip() + "\n\n[tool.mutmut]\n" + "\n".join(lines) + "\n"


def prepare(module: Module, fresh: bool) -> Path:
    folder = WORK / module.name
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = folder / name
        if (REPO / name).exists() and not link.is_symlink():
            link.symlink_to(REPO / name, target_is_directory=True)
    (folder / "pyproject.toml").write_text(module_pyproject(module), encoding="utf-8")
    return folder


def summarize(module: Module, folder: Path) -> dict:
    """Counts from mutmut's per-file result files (``mutants/<file>.meta``)."""
    counts = dict(module=module.name, total=0, killed=0, survived=0, no_tests=0, other=0)
    survivors = []
    for meta in sorted((folder / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        for key, code in codes.items():
            counts["total"] += 1
            if code in KILLED_CODES:
                counts["killed"] += 1
            elif code in SURVIVED_CODES:
                counts["survived"] += 1
                survivors.append(key)
            elif code in NO_TEST_CODES:
                counts["no_tests"] += 1
                survivors.append(key)
            else:
                counts["other"] += 1
    counts["score"] = 100.0 * counts["killed"] / counts["total"] if counts["total"] else 0.0
    counts["survivors"] = sorted(survivors)
    return counts


def run_module(module: Module, fresh: bool, max_children: int) -> dict:
    folder = prepare(module, fresh)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    mutmut = Path(sys.executable).with_name("mutmut")
    started = time.time()
    log = folder / "mutmut.log"
    with log.open("w", encoding="utf-8") as stream:
        completed = subprocess.run(
            [str(mutmut), "run", "--max-children", str(max_children)],
            cwd=folder,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    counts = summarize(module, folder)
    counts["minutes"] = round((time.time() - started) / 60, 1)
    counts["exit_code"] = completed.returncode
    return counts


def print_table(rows: list[dict]) -> None:
    header = ("module", "killed/total", "score", "survived", "no tests", "min")
    print("{:<18} {:>13} {:>7} {:>9} {:>9} {:>5}".format(*header))
    for row in rows:
        print(
            f"{row['module']:<18} {row['killed']:>6}/{row['total']:<6} {row['score']:>6.1f}% "
            f"{row['survived']:>9} {row['no_tests']:>9} {row['minutes']:>5}"
            + ("" if row["exit_code"] == 0 else f"  (mutmut exit {row['exit_code']}, see log)")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [module.name for module in MODULES]
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(names)}")
    parser.add_argument("--fresh", action="store_true", help="discard cached results")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--min-score", type=float, default=90.0, help="exit 1 below this")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(names))
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {names}")
    chosen = [module for module in MODULES if not args.modules or module.name in args.modules]
    rows = []
    for module in chosen:
        print(f"==> {module.name}: {', '.join(module.files)}", flush=True)
        rows.append(run_module(module, args.fresh, args.max_children))
        print_table(rows[-1:])
    WORK.mkdir(parents=True, exist_ok=True)
    summary_path = WORK / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    previous.update({row["module"]: row for row in rows})
    summary_path.write_text(json.dumps(previous, indent=2), encoding="utf-8")
    print()
    print_table(rows)
    return 0 if all(row["score"] >= args.min_score for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
