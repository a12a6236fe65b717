"""``python -m llm`` is the console script; usage errors exit 2 with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from llm_fixtures import make_config

from llm.cli import build_parser


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "llm", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_python_dash_m_llm_is_the_console_script(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = run_module("--help")
    assert result.returncode == 0
    assert result.stdout == build_parser().format_help()
    missing = run_module("report", "--work-dir", "no-such-work-dir")
    assert missing.returncode == 2 and "llm: error: " in missing.stderr


def test_max_bytes_smaller_than_one_request_is_a_usage_error(dataset):
    config_path = dataset / "config.json"
    config_path.write_text(make_config("http://127.0.0.1:9/v1").model_dump_json())
    common = ["batch", "prepare", "--config", str(config_path), "--annotations", str(dataset)]
    common += ["--work-dir", str(dataset / "work")]
    result = run_module(*common, "--max-bytes", "2000")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("llm: error: train/annotations/P0000_patch_000000#")
    assert "more than the part limit of 2000 bytes (--max-bytes)" in line
    assert not list((dataset / "work").rglob("input-*.jsonl"))  # no half-written part is left
    assert not (dataset / "work" / "batch" / "state.json").exists()

    zero = run_module(*common, "--max-bytes", "0")
    assert zero.returncode == 2 and "--max-bytes: must be at least 1, got 0" in zero.stderr

    fits = run_module(*common, "--max-bytes", "60000")
    assert fits.returncode == 0, fits.stderr
