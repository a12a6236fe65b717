"""``datagen`` command line: one subcommand per stage, plus ``run`` for the whole chain.

Examples::

    python -m datagen run --config datagen/configs/demo.yaml
    python -m datagen rules --config my.yaml --workers 8
    python -m datagen isaid --config my.yaml --set isaid.stride=320 --overwrite
"""

from __future__ import annotations

import argparse
import json
import sys

from datagen.config import ConfigError, load_config
from datagen.pipeline import STAGES, run_pipeline
from datagen.stage_state import StageError
from datagen.storage import InputError, SourceError

__all__ = ["build_parser", "main"]

STAGE_HELP = {
    "synthetic": "draw synthetic iSAID/LoveDA sources (real layouts) under <work_dir>/sources",
    "isaid": "cut iSAID images into patches",
    "loveda": "turn LoveDA tiles into patches with instances and land-cover regions",
    "rules": "derive positions, extremes, sizes, colours, relations and groups",
    "expressions": "generate template expressions and keep the unique ones",
    "historic": "bake historic-imagery variants of a share of the patches",
    "export": "write XML, Hugging Face parquet, RefCOCO-style files and statistics",
    "run": "run every enabled stage in order (resumable)",
}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: the packaged demo config)")
    parser.add_argument("--work-dir", help="override work_dir")
    parser.add_argument("--workers", type=int, help="worker processes (outputs do not change)")
    parser.add_argument("--seed", type=int, help="override seed")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set isaid.stride=320 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true",
        help="discard results of stages whose configuration changed (units whose inputs "
        "changed are redone without it)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datagen", description="Aerial-D dataset generation")
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in [*STAGES, "run"]:
        sub = commands.add_parser(name, help=STAGE_HELP[name], description=STAGE_HELP[name])
        _add_common(sub)
        if name == "run":
            sub.add_argument("--until", choices=list(STAGES), help="stop after this stage")
    return parser


def _config(args: argparse.Namespace):
    overrides = list(args.overrides)
    for key, value in (("work_dir", args.work_dir), ("workers", args.workers), ("seed", args.seed)):
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    if args.no_progress:
        overrides.append("progress=false")
    return load_config(args.config, overrides)


def _print_report(name: str, report: dict) -> None:
    counts = ", ".join(f"{k}={v}" for k, v in report.get("counts", {}).items())
    print(f"[{name}] units={report.get('units', 0)} {counts}")
    if report.get("skips"):
        skips = ", ".join(f"{k}={v}" for k, v in report["skips"].items())
        print(f"[{name}] skipped or repaired: {skips} (details in reports/{name}.json)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
        if args.stage == "run":
            reports = run_pipeline(cfg, until=args.until, overwrite=args.overwrite)
        else:
            reports = {args.stage: STAGES[args.stage](cfg, args.overwrite)}
    except (ConfigError, StageError, FileNotFoundError, InputError, SourceError) as exc:
        print(f"datagen: error: {exc}", file=sys.stderr)
        return 2
    for name, report in reports.items():
        _print_report(name, report)
    if "export" in reports:
        print(f"[export] dataset written to {cfg.work_path / 'export'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
