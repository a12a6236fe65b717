"""Wall time of ``make demo`` on an idle machine and beside competing busy processes.

Runs what ``make demo`` runs (``.venv/bin/aerialseg demo``, from scratch, in a temp work dir)
twice: first as the machine is, then while ``--busy`` processes of its own (pure-Python spin
loops, one core each) compete for the cores. The spinners are bounded (they stop by themselves
after ``--timeout`` seconds) and killed when the script ends, however it ends. The demo picks its
own thread counts (``configs/demo.py`` ``threads``); nothing here pins them.

Usage::

    python benchmarks/demo_load_bench.py                 # the full demo, idle then 2 busy
    python benchmarks/demo_load_bench.py --quick         # a dry run: 10 training iterations

It prints a Markdown table (wall s, load averages, the demo's CPU plan); ``--json PATH`` also
writes the figures. The target (issue 13) is < 300 s for both runs on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 300
QUICK_OPTIONS = ["train.max_iters=10", "train.log_interval=5", "overlays.count=1"]
# A spinner: busy until its deadline, so it never outlives the benchmark even if this script is
# killed with SIGKILL.
SPIN = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    pass\n"
)


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


def run_demo(aerialseg: str, work: Path, options: list[str], timeout: float) -> dict:
    """One demo from scratch; wall seconds, load averages and the demo's own summary."""
    command = [aerialseg, "demo", "--work-dir", str(work)]
    if options:
        command += ["--cfg-options", *options]
    log = work.parent / f"{work.name}.log"
    load_before = os.getloadavg()
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
    wall = time.perf_counter() - start
    summary_path = work / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "wall_s": round(wall, 1),
        "exit_code": code,
        "timed_out": code is None,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "cpu_plan": summary.get("cpu_plan"),
        "test_mIoU": summary.get("test_mIoU"),
        "log": str(log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="competing busy processes")
    parser.add_argument("--quick", action="store_true", help="dry run: 10 training iterations")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per demo run")
    parser.add_argument(
        "--aerialseg", default=str(REPO / ".venv" / "bin" / "aerialseg"),
        help="the aerialseg command (default: the project's venv)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work dirs and logs")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    options = QUICK_OPTIONS if args.quick else []
    temp = Path(tempfile.mkdtemp(prefix="demo_load_bench_"))
    spinners: list[subprocess.Popen] = []
    figures = {"cores": os.cpu_count(), "busy_processes": args.busy, "quick": args.quick}
    try:
        figures["idle"] = run_demo(args.aerialseg, temp / "idle", options, args.timeout)
        spinners = start_spinners(args.busy, args.timeout + 60)
        time.sleep(5)  # let the load average see them before the demo plans its threads
        figures["busy"] = run_demo(args.aerialseg, temp / "busy", options, args.timeout)
    finally:
        stop(spinners)
        if not args.keep:
            shutil.rmtree(temp, ignore_errors=True)
    print(f"# make demo under load: {figures['cores']} cores, quick={args.quick}\n")
    print("| run | wall s | load before (1, 5, 15 min) | CPU plan (torch threads, datagen "
          "workers, loader workers) | exit | test mIoU |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in ("idle", "busy"):
        run = figures[name]
        plan = run["cpu_plan"] or {}
        label = "idle" if name == "idle" else f"{args.busy} busy processes"
        print(
            f"| {label} | {run['wall_s']} | {tuple(round(v, 2) for v in run['load_before'])} | "
            f"{plan.get('torch')}, {plan.get('datagen_workers')}, "
            f"{plan.get('dataloader_workers')} | {run['exit_code']} | {run['test_mIoU']} |"
        )
    if not args.quick:
        worst = max(figures["idle"]["wall_s"], figures["busy"]["wall_s"])
        verdict = "met" if worst < TARGET_SECONDS else "missed"
        print(f"\ntarget < {TARGET_SECONDS} s for both runs: {verdict} (slowest {worst} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
