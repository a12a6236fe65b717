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
import resource
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


def _nodes(test_file: str, *tests: str) -> tuple[str, ...]:
    """pytest node ids of ``tests`` (function names; parametrised ones run every case)."""
    return tuple(f"{test_file}::{test}" for test in tests)


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
    # The loaders' tests share test_datasets.py; ``-k`` keeps each loader's own (and the shared
    # empty-sentence test), so the stats and clean runs do not load the other four datasets.
    Module(
        "rrsisd",
        ("aerialseg/datasets/rrsisd.py",),
        (
            "tests/datasets/test_datasets.py",
            "tests/datasets/test_referee_refer.py",
            "-k",
            "rrsisd or refs_ or empty_sentences or mmdet",
        ),
    ),
    Module(
        "refsegrs",
        ("aerialseg/datasets/refsegrs.py",),
        ("tests/datasets/test_datasets.py", "-k", "refsegrs or empty_sentences or describe"),
    ),
    Module(
        "nwpu_refer",
        ("aerialseg/datasets/nwpu_refer.py",),
        ("tests/datasets/test_datasets.py", "-k", "nwpu or empty_sentences"),
    ),
    Module(
        "urban1960",
        ("aerialseg/datasets/urban1960.py",),
        ("tests/datasets/test_datasets.py", "-k", "urban1960"),
    ),
    Module(
        "aerial_d",
        ("aerialseg/datasets/aerial_d.py",),
        (
            "tests/datasets/test_datasets.py",
            # The type filters are the base class's (its mutants are not these); they cost 10 s
            # per surviving mutant here. The domain filter is tested in test_aerial_d_xml_layout.
            "-k",
            "(aerial_d or samples_from_patch) and not test_aerial_d_filters",
        ),
    ),
    Module(
        # The XML format (aerialseg's aerial_d_format only re-exports it), against its own fast
        # tests: the loader tests reach it too, but at seconds per surviving mutant.
        "aerial_d_format",
        ("aerialformats/aerial_d.py",),
        ("tests/datasets/test_aerial_d_format.py",),
    ),
    Module(
        "prompter",
        ("aerialseg/models/prompter.py",),
        ("tests/models/test_referee_prompter.py",),
    ),
    Module(
        "siglip",
        ("aerialseg/models/siglip.py",),
        # The towers against transformers' own models on tiny folders and configs; the ClipSAM
        # tests reach the same code and would cost seconds per mutant.
        _nodes(
            "tests/models/test_checkpoints.py",
            "test_siglip_folder_round_trip_matches_transformers",
            "test_siglip2_naflex_patches_follow_the_processor_layout",
            "test_siglip_incomplete_or_missing_folder_is_refused",
            "test_siglip_from_a_config_is_the_transformers_model",
            "test_siglip_arguments_and_folders_are_checked",
            "test_siglip_text_attention_mask_is_passed_only_when_asked",
            "test_siglip_gradient_checkpointing_keeps_the_gradients",
            "test_siglip_folder_loads_in_float32_with_the_chosen_attention",
        ),
    ),
    Module(
        "sam",
        ("aerialseg/models/sam.py",),
        # segment-anything's own modules on the same weights at the 'tiny' sizes (both attention
        # implementations, tiled or not, gradients included), the checkpoint layout and errors,
        # and the fused backward against autograd. The 1024 px referees of test_referee_sam.py
        # check the same code at the official sizes, at seconds per run.
        (
            *_nodes(
                "tests/models/test_referee_sam.py",
                "test_architectures_equal_the_official_builders",
                "test_tiny_image_embedding_and_gradients_equal_segment_anything",
                "test_tiny_prompt_paths_and_decoder_equal_segment_anything",
                "test_tiny_activation_checkpointing_keeps_values_and_gradients",
                "test_attention_tiles_cover_each_row_once_within_the_budget",
            ),
            *_nodes(
                "tests/models/test_checkpoints.py",
                "test_sam_pth_round_trip_is_exact",
                "test_sam_key_mismatch_names_file_and_keys",
                "test_sam_wrong_size_and_hf_layout_are_explained",
                "test_sam_architecture_errors",
                "test_sam_default_and_named_architectures",
            ),
            *_nodes(
                "tests/models/test_speed_equivalence.py",
                "test_attention_implementation_is_validated",
                "test_the_fused_backward_matches_autograd_on_random_bias",
            ),
        ),
    ),
    Module(
        "data_preprocessor",
        ("aerialseg/models/data_preprocessor.py",),
        # Against the HF processors and tokenizers and segment_anything's Sam.preprocess; no
        # model is built, so a mutant costs well under a second of tests.
        (
            "tests/models/test_data_preprocessor.py",
            *_nodes(
                "tests/models/test_referee_siglip_input.py",
                "test_token_ids_equal_the_tokenizer_on_lower_cased_text",
                "test_without_lower_casing_the_text_is_tokenized_as_written",
                "test_surrounding_whitespace_is_dropped_before_tokenizing",
                "test_pixels_equal_the_hf_image_processors",
                "test_naflex_patches_and_features_equal_hf_siglip2",
            ),
        ),
    ),
    Module(
        "clipsam",
        ("aerialseg/models/clipsam.py",),
        # One shared tiny model for the post-processing (against mmseg's), IoU, losses and state
        # dict checks; the tiny-config tests for training, LoRA counts, checkpoints and wiring.
        # The bf16/AMP tests check mmengine's and torch's mixed precision, not this module.
        (
            "tests/models/test_clipsam_parts.py",
            *_nodes(
                "tests/models/test_clipsam.py",
                "test_forward_backward_reaches_exactly_the_trainable_parameters",
                "test_text_is_padded_to_fixed_length_so_features_ignore_the_batch",
                "test_predict_returns_masks_at_original_size_through_the_padding",
                "test_lora_trainable_counts_match_the_config",
                "test_trainable_set_and_lora_targets_are_checked",
                "test_checkpoint_round_trip_keeps_only_trained_tensors",
                "test_mismatched_preprocessor_size_is_refused",
            ),
            *_nodes(
                "tests/models/test_referee_prompter.py",
                "test_clipsam_feeds_siglip_scalars_and_the_global_logits_to_sam",
            ),
            *_nodes(
                "tests/models/test_feature_cache.py",
                "test_second_epoch_reads_the_cache_and_gives_the_same_features",
            ),
        ),
    ),
    Module(
        "checkpoint",
        ("aerialseg/engine/checkpoint.py",),
        (
            "tests/foundation/test_checkpoint_allow_list.py",
            "tests/foundation/test_safe_checkpoint.py",
            # It scans the sources for unsafe checkpoint loading, which mutmut's copies hold.
            "--deselect=tests/foundation/test_safe_checkpoint.py::"
            "test_no_code_loads_checkpoints_with_weights_only_false",
            # Seconds per mutant (two short trainings); the message-hub round trip of
            # test_checkpoint_allow_list.py loads what a resume loads.
            "--deselect=tests/foundation/test_safe_checkpoint.py::"
            "test_resume_continues_iteration_optimizer_and_message_hub",
        ),
    ),
    Module(
        "rules",
        ("datagen/rules.py",),
        (
            "tests/datagen/test_rules.py",
            "tests/datagen/test_rules_exact.py",
            # A changed rules configuration refused unless overwritten (a tiny LoveDA run, ~1 s).
            "tests/datagen/test_pipeline.py::test_changed_configuration_is_refused_unless_overwritten",
        ),
    ),
    Module("uniqueness", ("datagen/uniqueness.py",), ("tests/datagen/test_uniqueness.py",)),
    Module(
        "expressions",
        ("datagen/expressions.py",),
        (
            "tests/datagen/test_rules.py",
            "tests/datagen/test_uniqueness.py",
            "tests/datagen/test_expressions.py",
            "tests/datagen/test_expressions_stage.py",
        ),
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
        (
            "tests/llm/test_backend_requests.py",
            "tests/llm/test_backend_errors.py",
            "tests/llm/test_llm_enhance.py::test_missing_api_key_stops_before_any_work",
            "tests/llm/test_llm_enhance.py::test_rate_limits_server_errors_and_timeouts_are_retried",
        ),
    ),
    Module(
        "llm_cache",
        ("llm/cache.py",),
        # The enhance and batch tests reach the cache too, but spend seconds per mutant on it.
        ("tests/llm/test_cache_errors.py",),
    ),
    Module(
        "llm_batch",
        ("llm/batch.py",),
        (
            "tests/llm/test_batch_parts.py",
            "tests/llm/test_batch_errors.py",
            "tests/llm/test_llm_batch_report.py",
            "tests/llm/test_llm_batch_failures.py",
        ),
    ),
)
# mutmut's exit code per mutant (``mutmut.stats.status_by_exit_code``) -> our outcome. Killed: the
# tests failed (1, 3), the mutant ran past its CPU or wall-time limit (SIGXCPU: 24, -24, 152, 255;
# 36), was SIGKILLed one second after the CPU limit (-9) or crashed the test process (-11).
KILLED_CODES = {1, 3, 24, -24, 152, 255, 36, -9, -11}
SURVIVED_CODES = {0}
NO_TEST_CODES = {5, 33}
# Anything else (None: not checked, 2: interrupted, 34: skipped, 35: suspicious) counts as "other",
# against the score: a run that stopped early must not look complete.
GOAL_MINUTES = 60.0  # issue 11: all modules on a 2-core machine


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
    """``mutmut run`` for one module; its counts plus ``minutes`` and mutmut's ``exit_code``."""
    folder = prepare(module, fresh)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    mutmut = Path(sys.executable).with_name("mutmut")
    started, cpu_started = time.time(), _children_cpu_seconds()
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
    # CPU time of mutmut and every mutant's test run: about the wall time on an idle machine with
    # one worker, whatever else the machine was doing.
    counts["cpu_minutes"] = round((_children_cpu_seconds() - cpu_started) / 60, 1)
    # mutmut exits 0 when it tested every mutant, survivors or not; anything else means it
    # stopped (the clean tests failed, no test reached the module, a crash), and the counts may
    # be stale results of an earlier run.
    counts["exit_code"] = completed.returncode
    if completed.returncode != 0:
        print(f"mutmut FAILED for {module.name} (exit {completed.returncode}); end of {log}:")
        print(log_tail(log), flush=True)
    return counts


def _children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children and their descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def log_tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a mutmut log, spinner redraws (``\\r``) collapsed."""
    text = log.read_text(encoding="utf-8", errors="replace")
    # Split on newlines only (splitlines would also split the spinner's carriage returns).
    shown = [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")]
    return "\n".join("    " + line for line in shown[-lines:])


def default_max_children() -> int:
    """One mutmut worker per core this process may use (2 on the project's 2-core machines).

    ``sched_getaffinity`` honours CPU sets (containers, ``taskset``); ``os.cpu_count`` reports
    the host's cores, which would oversubscribe a limited machine.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def run_totals(rows: list[dict], minutes: float, all_modules: bool, fresh: bool) -> dict:
    """The run's wall time against :data:`GOAL_MINUTES` (which is for all modules at once)."""
    return dict(
        modules=[row["module"] for row in rows],
        minutes=round(minutes, 1),
        cpu_minutes=round(sum(row.get("cpu_minutes", 0.0) for row in rows), 1),
        goal_minutes=GOAL_MINUTES,
        all_modules=all_modules,
        fresh=fresh,
        within_goal=minutes < GOAL_MINUTES if all_modules else None,
        failed=[row["module"] for row in rows if row["exit_code"] != 0],
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def totals_line(totals: dict, module_count: int) -> str:
    line = (
        f"total: {totals['minutes']} min ({totals['cpu_minutes']} CPU min) for "
        f"{len(totals['modules'])} of {module_count} modules"
    )
    if totals["all_modules"]:
        verdict = "met" if totals["within_goal"] else "MISSED"
        line += f"; goal < {totals['goal_minutes']:g} min for all modules: {verdict}"
    else:
        line += f" (the {totals['goal_minutes']:g}-minute goal is for all modules)"
    if not totals["fresh"]:
        line += "; cached mutant results were reused (--fresh times a full run)"
    if totals["failed"]:
        line += f"; mutmut FAILED for {', '.join(totals['failed'])}"
    return line


def write_summary(path: Path, rows: list[dict], totals: dict) -> None:
    """Merge ``rows`` into ``summary.json`` (``modules`` by name, ``last_run``), atomically.

    Other modules' rows from earlier runs are kept; a file in the older flat layout (rows by
    module name only) is read as ``modules``.
    """
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    modules = previous.get("modules", {} if "last_run" in previous else previous)
    modules.update({row["module"]: row for row in rows})
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(dict(modules=modules, last_run=totals), indent=2), "utf-8")
    os.replace(temporary, path)


def print_table(rows: list[dict]) -> None:
    header = ("module", "killed/total", "score", "survived", "no tests", "other", "min", "CPU min")
    print("{:<18} {:>13} {:>7} {:>9} {:>9} {:>6} {:>5} {:>7}".format(*header))
    for row in rows:
        print(
            f"{row['module']:<18} {row['killed']:>6}/{row['total']:<6} {row['score']:>6.1f}% "
            f"{row['survived']:>9} {row['no_tests']:>9} {row['other']:>6} {row['minutes']:>5} "
            f"{row.get('cpu_minutes', '-'):>7}"
            + ("" if row["exit_code"] == 0 else f"  FAILED: mutmut exit {row['exit_code']}")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [module.name for module in MODULES]
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(names)}")
    parser.add_argument("--fresh", action="store_true", help="discard cached results")
    parser.add_argument(
        "--max-children",
        type=int,
        default=default_max_children(),
        help="parallel mutmut workers (default: the usable cores, %(default)s here)",
    )
    parser.add_argument("--min-score", type=float, default=90.0, help="exit 1 below this")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(names))
    if unknown:
        parser.error(f"unknown modules {unknown}; choose from {names}")
    chosen = [module for module in MODULES if not args.modules or module.name in args.modules]
    started = time.time()
    rows = []
    for module in chosen:
        print(f"==> {module.name}: {', '.join(module.files)}", flush=True)
        rows.append(run_module(module, args.fresh, args.max_children))
        print_table(rows[-1:])
    totals = run_totals(rows, (time.time() - started) / 60, len(chosen) == len(MODULES), args.fresh)
    WORK.mkdir(parents=True, exist_ok=True)
    write_summary(WORK / "summary.json", rows, totals)
    print()
    print_table(rows)
    print(totals_line(totals, len(MODULES)))
    passed = all(row["score"] >= args.min_score and row["exit_code"] == 0 for row in rows)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
