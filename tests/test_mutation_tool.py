"""The pure parts of ``tools/mutation.py`` (the ``make mutation`` runner): how mutmut's per-mutant
exit codes become the scores, the per-module pyproject, the summary file and the time goal."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutation():
    spec = importlib.util.spec_from_file_location("mutation_tool", REPO / "tools" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _write_meta(path: Path, codes: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(exit_code_by_key=codes, durations_by_key={})))


def test_summarize_maps_every_mutmut_exit_code(mutation, tmp_path):
    module = mutation.Module("fake", ("pkg/a.py", "pkg/sub/b.py"), ("tests/test_a.py",))
    _write_meta(
        tmp_path / "mutants" / "pkg" / "a.py.meta",
        {
            "a.x_f__mutmut_1": 1,  # tests failed
            "a.x_f__mutmut_2": 3,  # pytest internal error
            "a.x_f__mutmut_3": 0,  # survived
            "a.x_f__mutmut_4": 33,  # no test reaches it
            "a.x_f__mutmut_5": 5,  # pytest collected no tests
            "a.x_f__mutmut_6": None,  # not checked (the run stopped)
            "a.x_f__mutmut_7": 36,  # wall-time limit
        },
    )
    _write_meta(
        tmp_path / "mutants" / "pkg" / "sub" / "b.py.meta",
        {
            "b.x_g__mutmut_1": -9,  # SIGKILL after the CPU limit
            "b.x_g__mutmut_2": 24,  # SIGXCPU
            "b.x_g__mutmut_3": 34,  # skipped
            "b.x_g__mutmut_4": -11,  # crashed the test process
            "b.x_g__mutmut_5": 0,
        },
    )
    (tmp_path / "mutants" / "pkg" / "notes.meta").write_text("not a result file")
    counts = mutation.summarize(module, tmp_path)
    assert {k: counts[k] for k in ("total", "killed", "survived", "no_tests", "other")} == dict(
        total=12, killed=6, survived=2, no_tests=2, other=2
    )
    assert counts["score"] == pytest.approx(50.0)
    assert counts["survivors"] == [
        "a.x_f__mutmut_3",
        "a.x_f__mutmut_4",
        "a.x_f__mutmut_5",
        "b.x_g__mutmut_5",
    ]
    empty = mutation.summarize(module, tmp_path / "nothing")
    assert (empty["total"], empty["score"]) == (0, 0.0)


def test_module_pyproject_scopes_mutmut_to_the_module(mutation):
    module = mutation.Module(
        "two_packages",
        ("aerialseg/datasets/aerial_d.py", "aerialformats/aerial_d.py"),
        ("tests/datasets/test_datasets.py", "-k", "aerial_d"),
    )
    text = mutation.module_pyproject(module)
    assert text.count("[tool.mutmut]") == 1
    data = tomllib.loads(text)
    repo = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    settings = data["tool"]["mutmut"]
    assert settings["only_mutate"] == list(module.files)
    assert settings["source_paths"] == ["aerialformats", "aerialseg"]
    assert settings["pytest_add_cli_args_test_selection"] == list(module.tests)
    assert "configs" in settings["also_copy"]
    for key, value in repo["tool"]["mutmut"].items():  # the shared settings are kept
        if key != "also_copy":
            assert settings[key] == value, key
    assert {k: v for k, v in data["tool"].items() if k != "mutmut"} == {
        k: v for k, v in repo["tool"].items() if k != "mutmut"
    }


def test_every_module_has_existing_files_and_tests(mutation):
    names = [module.name for module in mutation.MODULES]
    assert len(names) == len(set(names))
    for module in mutation.MODULES:
        for pattern in module.files:
            assert list(REPO.glob(pattern)), (module.name, pattern)
        option_values = {
            value for flag, value in zip(module.tests, module.tests[1:]) if flag in ("-k", "-m")
        }
        for test in module.tests:
            if test.startswith("-") or test in option_values:
                continue
            path, _, function = test.partition("::")
            assert (REPO / path).is_file(), (module.name, test)
            if function:  # a renamed test would leave mutmut without it
                assert f"def {function}(" in (REPO / path).read_text(encoding="utf-8"), test


def _row(name: str, exit_code: int = 0) -> dict:
    return dict(module=name, exit_code=exit_code, score=95.0, cpu_minutes=2.25)


def test_totals_are_checked_against_the_goal_for_all_modules_only(mutation):
    rows = [_row("metrics"), _row("sam", exit_code=1)]
    under = mutation.run_totals(rows, 59.94, all_modules=True, fresh=True)
    assert (under["minutes"], under["within_goal"], under["failed"]) == (59.9, True, ["sam"])
    assert under["cpu_minutes"] == 4.5
    line = mutation.totals_line(under, 22)
    assert line.startswith("total: 59.9 min (4.5 CPU min) for 2 of 22 modules; goal < 60 min")
    assert "met" in line and "mutmut FAILED for sam" in line and "cached" not in line
    over = mutation.run_totals(rows, 60.0, all_modules=True, fresh=False)
    assert over["within_goal"] is False
    assert "MISSED" in mutation.totals_line(over, 22)
    assert "cached mutant results were reused" in mutation.totals_line(over, 22)
    some = mutation.run_totals(rows[:1], 3.0, all_modules=False, fresh=True)
    assert some["within_goal"] is None
    assert "(the 60-minute goal is for all modules)" in mutation.totals_line(some, 22)


def test_summary_merges_rows_and_reads_the_older_flat_layout(mutation, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"metrics": _row("metrics"), "sam": _row("sam")}))
    totals = mutation.run_totals([_row("sam", 2)], 1.0, all_modules=False, fresh=True)
    mutation.write_summary(path, [_row("sam", 2)], totals)
    data = json.loads(path.read_text())
    assert data["modules"] == {"metrics": _row("metrics"), "sam": _row("sam", 2)}
    assert data["last_run"] == totals
    mutation.write_summary(path, [_row("clipsam")], totals)
    assert sorted(json.loads(path.read_text())["modules"]) == ["clipsam", "metrics", "sam"]
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left


def test_failure_tail_and_default_workers(mutation, tmp_path, monkeypatch):
    log = tmp_path / "mutmut.log"
    log.write_text("⠋ Running stats\r⠙ Running stats\rfailed to collect stats\nlast line\n")
    assert mutation.log_tail(log, lines=2) == "    failed to collect stats\n    last line"
    monkeypatch.setattr(mutation.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(mutation.os, "cpu_count", lambda: 64)
    assert mutation.default_max_children() == 2
