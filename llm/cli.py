"""The ``llm`` console script.

::

    llm enhance     --config o3 --annotations data/aeriald/train/annotations --work-dir work_dirs/o3
    llm batch       {prepare,submit,status,collect} --config o3 --work-dir work_dirs/o3 ...
    llm build-sft   --config o3 --annotations ... --work-dir work_dirs/o3 --out data/sft
    llm finetune    --config gemma3_12b_qlora --data data/sft --out work_dirs/g3 [--merge-to DIR]
    llm merge       --adapter work_dirs/gemma3/adapter --out models/gemma-aerial-12b
    llm report      --work-dir work_dirs/o3 [--config o3]
    llm loopback-server --port 8765

``--config`` takes a YAML path or the name of a file in ``llm/configs/``. The API key is read from
the environment variable the config names (``backend.api_key_env``), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from llm.config import ConfigError, load_enhance_config


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML file or name in llm/configs/")
    parser.add_argument("--annotations", required=True, help="folder of Aerial-D *.xml (or a file)")
    parser.add_argument("--images", help="image folder (default: <split>/images next to the XML)")
    parser.add_argument("--out", help="write annotations to this tree (default: in place)")
    parser.add_argument("--work-dir", required=True, help="ledger, cache and batch state")


def _add_remote_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML file or name in llm/configs/")
    parser.add_argument("--work-dir", required=True, help="ledger, cache and batch state")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm", description="Aerial-D expression enhancement and Gemma 3 distillation"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    enhance = commands.add_parser("enhance", help="enhance expressions through the request queue")
    _add_data_args(enhance)
    enhance.add_argument("--sample", type=int, help="stratified sample of N targets")
    enhance.add_argument("--sample-seed", type=int, default=0)
    enhance.add_argument("--limit", type=int, help="request at most N targets in this run")
    enhance.add_argument("--redo", action="store_true", help="regenerate enhanced targets too")
    enhance.add_argument("--concurrency", type=int, help="override queue.concurrency")
    enhance.add_argument("--no-progress", action="store_true")

    batch = commands.add_parser("batch", help="the OpenAI Batch API path")
    steps = batch.add_subparsers(dest="step", required=True)
    prepare = steps.add_parser("prepare", help="write request JSONL parts")
    _add_data_args(prepare)
    prepare.add_argument("--sample", type=int, help="stratified sample of N targets")
    prepare.add_argument("--sample-seed", type=int, default=0)
    prepare.add_argument("--max-requests", type=_positive_int, default=50_000)
    prepare.add_argument("--max-bytes", type=_positive_int, default=190_000_000)
    _add_remote_args(steps.add_parser("submit", help="upload parts and create batches"))
    _add_remote_args(steps.add_parser("status", help="poll the batches"))
    _add_data_args(steps.add_parser("collect", help="download answers and merge them"))

    sft = commands.add_parser("build-sft", help="SFT set (chat JSONL + images) from a teacher run")
    _add_data_args(sft)
    sft.add_argument("--sft-out", required=True, help="output folder of the SFT set")
    sft.add_argument("--eval-fraction", type=float, default=0.1)
    sft.add_argument("--seed", type=int, default=0)

    finetune = commands.add_parser("finetune", help="Gemma 3 QLoRA on an SFT set")
    finetune.add_argument("--config", required=True, help="fine-tune YAML or llm/configs/ name")
    finetune.add_argument("--data", required=True, help="SFT folder from `llm build-sft`")
    finetune.add_argument("--out", required=True, help="output folder (adapter, manifest)")
    finetune.add_argument("--merge-to", help="also merge the adapter into a checkpoint here")

    merge = commands.add_parser("merge", help="merge a LoRA adapter into its base for vLLM")
    merge.add_argument("--adapter", required=True)
    merge.add_argument("--out", required=True)
    merge.add_argument("--base", help="base model (default: the adapter's base_model_name_or_path)")
    merge.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])

    report = commands.add_parser("report", help="counts, failure reasons and cost of a work dir")
    report.add_argument("--work-dir", required=True)
    report.add_argument("--config", help="config whose pricing section prices the tokens")
    report.add_argument("--json", action="store_true", help="print JSON instead of text")

    loopback = commands.add_parser(
        "loopback-server", help="a local OpenAI-compatible server on loopback (dry runs)"
    )
    loopback.add_argument("--port", type=int, default=8765)
    loopback.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    return parser


def _files(args):
    from llm.targets import discover_annotations

    return discover_annotations(args.annotations, args.out, args.images)


def _enhance(args) -> int:
    from llm.backend import api_key
    from llm.enhance import RunOptions, enhance

    overrides = {"queue": {"concurrency": args.concurrency}} if args.concurrency else {}
    config = load_enhance_config(args.config, **overrides)
    api_key(config.backend)
    options = RunOptions(
        redo=args.redo,
        sample=args.sample,
        sample_seed=args.sample_seed,
        limit=args.limit,
        progress=not args.no_progress,
    )
    summary = enhance(config, _files(args), args.work_dir, options)
    print(json.dumps(summary.to_dict(), indent=2))
    return 0 if summary.failed == 0 else 1


def _batch(args) -> int:
    from llm.backend import api_key
    from llm.batch import BatchJob
    from llm.enhance import RunOptions

    config = load_enhance_config(args.config)
    job = BatchJob(config, args.work_dir)
    if args.step == "prepare":
        options = RunOptions(sample=args.sample, sample_seed=args.sample_seed)
        result = job.prepare(_files(args), options, args.max_requests, args.max_bytes)
        print(json.dumps(result.__dict__, indent=2))
        return 0
    api_key(config.backend)
    if args.step == "submit":
        parts = job.submit()
        print(json.dumps([{k: p[k] for k in ("input", "batch_id", "status")} for p in parts]))
    elif args.step == "status":
        for part in job.status():
            counts = part.get("request_counts") or {}
            print(f"{part['input']}: {part.get('status', 'not submitted')} {counts}")
    else:
        counts, summary = job.collect(_files(args))
        print(json.dumps({"collected": counts, "merge": summary.to_dict()}, indent=2))
    return 0


def _build_sft(args) -> int:
    from llm.sft import build_sft_set

    config = load_enhance_config(args.config)
    manifest = build_sft_set(
        config, _files(args), args.work_dir, args.sft_out, args.eval_fraction, args.seed
    )
    print(json.dumps({k: manifest[k] for k in ("counts", "patches", "skipped")}, indent=2))
    return 0


def _finetune(args) -> int:
    from llm.finetune import load_finetune_config, merge_adapter, run_finetune

    manifest = run_finetune(load_finetune_config(args.config), args.data, args.out)
    print(
        json.dumps(
            {k: manifest[k] for k in ("train_losses", "eval_loss", "samples_valid")}, indent=2
        )
    )
    if args.merge_to:
        print(f"merged checkpoint: {merge_adapter(manifest['adapter'], args.merge_to)}")
    return 0


def _report(args) -> int:
    from llm.report import build_report, format_report

    pricing = load_enhance_config(args.config).pricing if args.config else None
    report = build_report(args.work_dir, pricing)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    from aerialformats.aerial_d import AerialDFormatError
    from llm.backend import FatalBackendError, MissingApiKeyError
    from llm.batch import RequestTooLargeError
    from llm.batch_state import BatchStateError
    from llm.render import RenderError

    args = build_parser().parse_args(argv)
    handlers = {
        "enhance": _enhance,
        "batch": _batch,
        "build-sft": _build_sft,
        "finetune": _finetune,
        "report": _report,
    }
    try:
        if args.command == "merge":
            from llm.finetune import merge_adapter

            print(merge_adapter(args.adapter, args.out, args.base, args.dtype))
            return 0
        if args.command == "loopback-server":
            from llm.loopback_server import serve_forever

            serve_forever(args.port, args.latency_ms / 1000)
            return 0
        return handlers[args.command](args)
    except (
        ConfigError,
        MissingApiKeyError,
        FatalBackendError,
        BatchStateError,
        RequestTooLargeError,
        AerialDFormatError,
        RenderError,
        FileNotFoundError,
    ) as exc:
        print(f"llm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
