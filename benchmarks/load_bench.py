"""Wall and CPU time of ``make demo`` or ``make test``, on the machine as it is and under load.

Runs what a user runs, twice: first as the machine is, then while ``--busy`` processes of its
own (pure-Python spin loops, one core each) compete for the cores. The spinners are bounded (they
stop by themselves after ``--timeout`` seconds) and killed when the script ends, however it ends.
Nothing here pins thread counts: the demo picks its own (``configs/demo.py`` ``threads``) and the
test suite its own (``tests/conftest.py``: one torch thread per test).

* ``--command demo`` (default): ``.venv/bin/aerialseg demo`` from scratch in a temp work dir;
  ``--quick`` trains 10 iterations instead of the full schedule (a dry run of the script).
* ``--command test``: ``make test`` (ruff, then the whole suite with coverage), without the
  reinstall make would start when a requirements file is newer than the venv;
  ``--pytest-args`` passes ``PYTEST_ARGS`` (e.g. one test file, for a dry run of the script).

Usage::

    python benchmarks/load_bench.py                          # make demo, idle then 2 busy
    python benchmarks/load_bench.py --command test           # make test, idle then 2 busy
    python benchmarks/load_bench.py --quick                  # dry run: 10 training iterations
    python benchmarks/load_bench.py --command test --pytest-args tests/product/test_demo.py

It prints the machine, then a Markdown table per run: wall s, CPU s (user + sys of the command
and everything it waited for), load averages before, the CPU plan; ``--json PATH`` also writes
the figures. The targets (issue 13) on 2 cores: < 300 s for the demo, < 600 s for the tests, both
idle and beside two busy processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_STAMP = ".venv/.aerialseg-installed"  # the Makefile's $(STAMP), as make names it
TARGET_SECONDS = {"demo": 300, "test": 600}
QUICK_OPTIONS = ["train.max_iters=10", "train.log_interval=5", "overlays.count=1"]
TEST_PLAN = "2 pytest-xdist workers (TEST_WORKERS), 1 torch thread per test (tests/conftest.py)"
# A spinner: busy until its deadline, so it never outlives the benchmark even if this script is
# killed with SIGKILL.
SPIN = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)
PYTEST_SUMMARY = re.compile(r"^=+ (.*\b(?:passed|failed|error)\b.*) =+$", re.MULTILINE)


def machine() -> str:
    """CPU model, logical cores and OS of this machine, in one line."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}"


def start_spinners(count: int, seconds: float) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)], start_new_session=True)
        for _ in range(count)
    ]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(command: list[str], log: Path, timeout: float) -> dict:
    """Run ``command`` in the repository with its output in ``log``; wall and CPU seconds.

    The CPU time is the command's and that of every process it waited for (``make`` -> pytest,
    the demo's datagen workers); the spinners are waited for only at the end, so they are not in it.
    """
    load_before = os.getloadavg()
    cpu_before = children_cpu_seconds()
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as stream:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(children_cpu_seconds() - cpu_before, 1),
        "exit_code": code,
        "timed_out": code is None,
        "load_before": [round(value, 2) for value in load_before],
        "load_after": [round(value, 2) for value in os.getloadavg()],
        "log": str(log),
    }


def run_demo(aerialseg: str, work: Path, options: list[str], timeout: float) -> dict:
    """One demo from scratch in ``work``; the timing, the demo's CPU plan and its results."""
    command = [aerialseg, "demo", "--work-dir", str(work)]
    if options:
        command += ["--cfg-options", *options]
    figures = timed_run(command, work.parent / f"{work.name}.log", timeout)
    summary_path = work / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    plan = summary.get("cpu_plan") or {}
    figures["cpu_plan"] = (
        f"torch {plan['torch']} thread(s), {plan['datagen_workers']} datagen worker(s), "
        f"{plan['dataloader_workers']} dataloader worker(s)"
        if plan
        else "unknown (no summary.json)"
    )
    figures["result"] = (
        f"test mIoU {summary['test_mIoU']}, control {summary['control_mIoU']}"
        if summary
        else "no result"
    )
    return figures


def run_tests(make: str, pytest_args: str, log: Path, timeout: float) -> dict:
    """``make test`` (with ``PYTEST_ARGS``); the timing and pytest's summary line."""
    # `--old-file`: time lint + pytest only, not a reinstall because a requirements file is newer
    # than the install stamp (check_installed made sure the venv exists).
    command = [make, "--no-print-directory", f"--old-file={INSTALL_STAMP}", "test"]
    if pytest_args:
        command.append(f"PYTEST_ARGS={pytest_args}")
    figures = timed_run(command, log, timeout)
    found = PYTEST_SUMMARY.findall(log.read_text(encoding="utf-8", errors="replace"))
    figures["cpu_plan"] = TEST_PLAN
    figures["result"] = found[-1] if found else "no pytest summary (see the log)"
    return figures


def check_installed() -> None:
    """The timed runs leave out ``make install``: the venv must be there already."""
    if not (REPO / INSTALL_STAMP).is_file():
        raise SystemExit(f"{INSTALL_STAMP} not found: run `make install` first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--command", choices=("demo", "test"), default="demo",
                        help="time `make demo` (default) or `make test`")  # fmt: skip
    parser.add_argument("--busy", type=int, default=2, help="competing busy processes")
    parser.add_argument("--quick", action="store_true",
                        help="demo only: a dry run with 10 training iterations")  # fmt: skip
    parser.add_argument("--pytest-args", default="",
                        help="test only: PYTEST_ARGS for make test, e.g. a test file")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per run (default: 3x the target)")  # fmt: skip
    parser.add_argument(
        "--aerialseg", default=str(REPO / ".venv" / "bin" / "aerialseg"),
        help="the aerialseg command (default: the project's venv)",
    )  # fmt: skip
    parser.add_argument("--make", default="make", help="the make command")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs and logs")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick and args.command != "demo":
        parser.error("--quick is for --command demo (use --pytest-args for a short test run)")
    if args.pytest_args and args.command != "test":
        parser.error("--pytest-args is for --command test")
    if args.busy < 0:
        parser.error("--busy must be >= 0")
    target = TARGET_SECONDS[args.command]
    timeout = args.timeout if args.timeout is not None else 3 * target
    full = not (args.quick or args.pytest_args)
    if args.command == "test":
        check_installed()

    temp = Path(tempfile.mkdtemp(prefix=f"load_bench_{args.command}_"))
    options = QUICK_OPTIONS if args.quick else []
    figures = {
        "command": f"make {args.command}",
        "machine": machine(),
        "busy_processes": args.busy,
        "full_run": full,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "runs": {},
    }
    spinners: list[subprocess.Popen] = []

    def one_run(name: str) -> dict:
        if args.command == "demo":
            return run_demo(args.aerialseg, temp / name, options, timeout)
        return run_tests(args.make, args.pytest_args, temp / f"{name}.log", timeout)

    try:
        figures["runs"]["idle"] = one_run("idle")
        if args.busy:
            spinners = start_spinners(args.busy, timeout + 60)
            time.sleep(5)  # let the load average see them before the demo plans its threads
            figures["runs"]["busy"] = one_run("busy")
    finally:
        stop(spinners)
        if not args.keep:
            shutil.rmtree(temp, ignore_errors=True)

    detail = "" if full else f" (short run: {'--quick' if args.quick else args.pytest_args})"
    print(f"# make {args.command} under load{detail}\n")
    print(f"machine: {figures['machine']}; {figures['date_utc']} UTC\n")
    print("| run | wall s | CPU s | load before (1, 5, 15 min) | CPU plan | exit | result |")
    print("|---|---|---|---|---|---|---|")
    for name, run in figures["runs"].items():
        label = "as the machine is" if name == "idle" else f"beside {args.busy} busy processes"
        print(
            f"| {label} | {run['wall_s']} | {run['cpu_s']} | {tuple(run['load_before'])} | "
            f"{run['cpu_plan']} | {run['exit_code']} | {run['result']} |"
        )
    if full:
        worst = max(run["wall_s"] for run in figures["runs"].values())
        failed = any(run["exit_code"] != 0 for run in figures["runs"].values())
        verdict = "missed" if failed or worst >= target else "met"
        print(f"\ntarget < {target} s for every run: {verdict} (slowest {worst} s)")
    if args.keep:
        print(f"\nlogs and work dirs kept in {temp}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
