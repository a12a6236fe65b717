"""The ``aerialseg`` command: ``predict`` on images, ``serve`` the web page, ``export-model`` a
trained model for sharing, run the ``demo``.

A thin shell: each subcommand parses its flags and calls the package function that does the work
(:mod:`aerialseg.predict`, :mod:`aerialseg.serve`, :mod:`aerialseg.apis`, :mod:`aerialseg.demo`).

The error promise: a bad argument is reported on one line (``aerialseg CMD: error: ...``) with exit
code 2 *before* the model loads; results go to stdout, logs (mmengine's, the model's parameter
table) and progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from mmengine.config import DictAction


def _bands(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bands expects 1 or 3 comma-separated band numbers such as 4,3,2, got '{text}'"
        ) from None
    if len(bands) not in (1, 3):
        raise argparse.ArgumentTypeError(f"--bands expects 1 or 3 band numbers, got '{text}'")
    return bands


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", help="trained checkpoint (.pth); its saved config is used unless --config"
    )
    parser.add_argument("--config", help="model config (mmengine .py) overriding the saved one")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override model config entries, e.g. model.vlm.pretrained=checkpoints/siglip2",
    )
    parser.add_argument(
        "--pretrained-root",
        help="folder holding the pretrained files (SigLIP folder, SAM .pth) by name; searched "
        "before $AERIALSEG_CHECKPOINTS and the checkpoint's folder",
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="experts: load a checkpoint whose keys do not all match the model (default: refuse)",
    )


def _add_window_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window",
        type=int,
        default=480,
        help="tile side in pixels for large images (default 480, Aerial-D's patch size); "
        "0 predicts the whole image in one pass",
    )
    parser.add_argument(
        "--overlap", type=int, default=96, help="pixels shared by neighbouring tiles (default 96)"
    )
    parser.add_argument(
        "--bands",
        type=_bands,
        help="1-based bands to use as R,G,B (or one grey band), e.g. 4,3,2; default: the bands "
        "labelled red/green/blue, else 1,2,3",
    )
    parser.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        default=(2.0, 98.0),
        metavar=("LOW", "HIGH"),
        help="per-band stretch range for 16-bit/float data (default 2 98)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aerialseg", description="Referring segmentation of aerial and satellite images."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="segment images with referring expressions",
        description="Write mask PNGs, COCO RLE JSON, an overlay and, for georeferenced inputs, "
        "GeoJSON polygons and a mask GeoTIFF in the raster's CRS.",
    )
    predict.add_argument("images", nargs="+", help="PNG, JPEG or (Geo)TIFF files")
    predict.add_argument(
        "-e",
        "--expression",
        dest="expressions",
        action="append",
        default=[],
        help='referring expression, e.g. -e "the white car" (repeat for several)',
    )
    predict.add_argument(
        "--expressions-file", help="text file with one expression per line (blank lines skipped)"
    )
    predict.add_argument("--out-dir", default="work_dirs/predict", help="output folder")
    predict.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        help="simplify GeoJSON polygons with this tolerance in CRS units (default 0: exact)",
    )
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_model_arguments(predict)
    _add_window_arguments(predict)

    serve = commands.add_parser("serve", help="run the web page")
    _add_model_arguments(serve)
    _add_window_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: local only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--max-upload-mb", type=float, default=64.0, help="largest accepted upload (MB)"
    )
    serve.add_argument(
        "--max-megapixels", type=float, default=100.0, help="largest accepted image (megapixels)"
    )
    serve.add_argument(
        "--max-expressions",
        type=int,
        default=32,
        help="most expressions in one request (default 32)",
    )
    serve.add_argument(
        "--max-expression-megapixels",
        type=float,
        default=200.0,
        help="most expressions x image megapixels in one request, the memory bound of a "
        "prediction (default 200: about 1-1.5 GB)",
    )

    export = commands.add_parser(
        "export-model",
        help="write a trained model as one self-contained folder (pretrained files included)",
        description="Copy a trained checkpoint and the pretrained files it needs into OUT_DIR, "
        "so it works from any folder and on other machines: aerialseg predict --checkpoint "
        "OUT_DIR ...",
    )
    export.add_argument("out_dir", help="new folder to write (must not exist)")
    _add_model_arguments(export)

    demo = commands.add_parser(
        "demo", help="datagen -> Aerial-D -> train tiny ClipSAM -> test table -> overlays"
    )
    demo.add_argument("--config", default="configs/demo.py", help="demo settings")
    demo.add_argument("--work-dir", help="output folder (default: the config's work_dir)")
    demo.add_argument(
        "--cfg-options", nargs="+", action=DictAction, help="override demo settings, key=value"
    )
    return parser


def _read_expressions(args: argparse.Namespace) -> list[str]:
    expressions = list(args.expressions)
    if args.expressions_file:
        try:
            with open(args.expressions_file, encoding="utf-8") as file:
                expressions += [line.strip() for line in file if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise ValueError(
                f"--expressions-file '{args.expressions_file}' cannot be read: {reason}"
            ) from None
    return expressions


class UsageError(ValueError):
    """A bad command-line argument: one line, exit code 2, before any model is loaded."""


def check_out_dir(path: str) -> None:
    """Create ``path`` if needed and prove it writable with a probe file (removed again)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--out-dir '{path}' is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".aerialseg-write-test-"):
            pass
    except OSError as error:
        raise UsageError(
            f"--out-dir '{path}' is not writable ({error.strerror or error}); choose another folder"
        ) from None


def check_model_arguments(args: argparse.Namespace) -> None:
    """Model flags that name files: checked before anything heavy is imported or loaded."""
    if args.checkpoint is None and args.config is None:
        raise UsageError("give --checkpoint (its saved config is used), --config, or both")
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        raise UsageError(f"--checkpoint '{args.checkpoint}' does not exist")
    if args.config is not None and not os.path.isfile(args.config):
        raise UsageError(f"--config '{args.config}' does not exist")
    if args.pretrained_root is not None and not os.path.isdir(args.pretrained_root):
        raise UsageError(f"--pretrained-root '{args.pretrained_root}' is not a folder")


def check_window_arguments(args: argparse.Namespace) -> None:
    from aerialseg.predict.pipeline import check_tiling

    if args.window < 0:
        raise UsageError(f"--window must be >= 0 (0: whole image), got {args.window}")
    try:
        check_tiling(args.window, args.overlap)
    except ValueError as error:
        raise UsageError(str(error)) from None
    low, high = args.percentiles
    if not 0.0 <= low < high <= 100.0:
        raise UsageError(f"--percentiles must satisfy 0 <= LOW < HIGH <= 100, got {low:g} {high:g}")


@contextlib.contextmanager
def logs_to_stderr():
    """Send mmengine's log lines (the model's parameter table...) and stray prints to stderr, so
    that stdout carries only results."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    swapped = [  # mmengine's console handler (made on stdout); its FileHandlers stay as they are
        (handler, handler.stream)
        for handler in logger.handlers
        if type(handler) is logging.StreamHandler and handler.stream is not sys.stderr
    ]
    for handler, _ in swapped:
        handler.stream = sys.stderr  # not setStream(): it flushes the old stream
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in swapped:
            handler.stream = stream


def _load_model(command: str, args: argparse.Namespace):
    from aerialseg.engine import CheckpointError
    from aerialseg.predict import build_predictor

    try:
        with logs_to_stderr():
            return build_predictor(
                args.config,
                args.checkpoint,
                args.device,
                args.cfg_options,
                pretrained_root=args.pretrained_root,
                allow_partial=args.allow_partial,
            )
    except (OSError, ValueError, RuntimeError, KeyError, CheckpointError) as error:
        print(f"aerialseg {command}: error: cannot load the model: {error}", file=sys.stderr)
        return None


def run_predict(args: argparse.Namespace) -> int:
    from aerialseg.predict import (
        InputImageError,
        PredictOptions,
        predict_file,
        safe_stem,
        validate_expressions,
    )

    try:
        expressions = validate_expressions(_read_expressions(args))
        check_window_arguments(args)
        check_model_arguments(args)
        stems = [safe_stem(path) for path in args.images]
        duplicates = sorted({s for s in stems if stems.count(s) > 1})
        if duplicates:
            raise UsageError(
                f"several inputs share the output name(s) {duplicates}; run them into different "
                "--out-dir folders"
            )
        if args.simplify < 0:
            raise UsageError(f"--simplify must be >= 0, got {args.simplify:g}")
        check_out_dir(args.out_dir)
    except ValueError as error:
        print(f"aerialseg predict: error: {error}", file=sys.stderr)
        return 2
    options = PredictOptions(
        window=args.window,
        overlap=args.overlap,
        bands=args.bands,
        percentiles=tuple(args.percentiles),
        simplify=args.simplify,
        progress=not args.no_progress,
    )
    if args.checkpoint is None:
        print(
            "aerialseg predict: warning: no --checkpoint; the model has only its config's "
            "initial weights",
            file=sys.stderr,
        )
    predictor = _load_model("predict", args)
    if predictor is None:
        return 1
    for message in getattr(predictor, "truncation_warnings", lambda _: [])(expressions):
        print(f"aerialseg predict: warning: {message}", file=sys.stderr)
    failures = 0
    for path in args.images:

        def report_phase(phase: str, path: str = path) -> None:
            if phase == "export" and options.progress:
                print(f"{path}: writing masks, overlay and GeoJSON...", file=sys.stderr)

        try:
            with logs_to_stderr():
                result, written = predict_file(
                    path, expressions, predictor, args.out_dir, options, on_phase=report_phase
                )
        except (InputImageError, ValueError) as error:
            failures += 1
            print(f"aerialseg predict: error: {error}", file=sys.stderr)
            continue
        for note in result.notes:
            print(f"aerialseg predict: note: {note}", file=sys.stderr)
        print(f"{path}: {result.info.width} x {result.info.height} px")
        for expression, score, mask, area in zip(
            expressions, result.scores, result.masks, result.areas_m2
        ):
            ground = f", {area:,.1f} m2" if area is not None else ""
            print(f"  {expression!r}: {int(mask.sum())} px{ground}, score {score:.3f}")
        print(f"  wrote {len(written)} files to {args.out_dir}")
    return 1 if failures else 0


def run_serve(args: argparse.Namespace) -> int:
    from aerialseg.serve import ServeSettings, serve

    try:
        check_window_arguments(args)
        check_model_arguments(args)
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port must be in 0..65535, got {args.port}")
        for flag, value in (
            ("--max-upload-mb", args.max_upload_mb),
            ("--max-megapixels", args.max_megapixels),
            ("--max-expressions", args.max_expressions),
            ("--max-expression-megapixels", args.max_expression_megapixels),
        ):
            if value <= 0:
                raise UsageError(f"{flag} must be > 0, got {value:g}")
    except ValueError as error:
        print(f"aerialseg serve: error: {error}", file=sys.stderr)
        return 2
    settings = ServeSettings(
        config=args.config,
        checkpoint=args.checkpoint,
        device=args.device,
        cfg_options=args.cfg_options,
        pretrained_root=args.pretrained_root,
        allow_partial=args.allow_partial,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=int(args.max_megapixels * 1_000_000),
        max_expressions=args.max_expressions,
        max_expression_pixels=int(args.max_expression_megapixels * 1_000_000),
        window=args.window,
        overlap=args.overlap,
        bands=args.bands,
        percentiles=tuple(args.percentiles),
    )
    predictor = _load_model("serve", args)
    if predictor is None:
        return 1
    serve(settings, predictor)
    return 0


def run_export_model(args: argparse.Namespace) -> int:
    from aerialseg.apis.export_model import export_model
    from aerialseg.engine import CheckpointError

    try:
        check_model_arguments(args)
        if args.checkpoint is None:
            raise UsageError("--checkpoint is required: the trained checkpoint to export")
        if os.path.exists(args.out_dir):
            raise UsageError(f"'{args.out_dir}' exists; export into a new folder")
    except ValueError as error:
        print(f"aerialseg export-model: error: {error}", file=sys.stderr)
        return 2
    try:
        with logs_to_stderr():
            manifest = export_model(
                args.checkpoint,
                args.out_dir,
                config=args.config,
                cfg_options=args.cfg_options,
                pretrained_root=args.pretrained_root,
            )
    except (OSError, ValueError, CheckpointError) as error:
        print(f"aerialseg export-model: error: {error}", file=sys.stderr)
        return 1
    print(f"{args.out_dir}: model.pth + {len(manifest['pretrained'])} pretrained file(s)")
    for name, entry in manifest["pretrained"].items():
        print(f"  {name}  {entry['bytes']:,} bytes  sha256 {entry['sha256'][:16]}...")
    print(f"use it with: aerialseg predict IMAGE -e TEXT --checkpoint {args.out_dir}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from aerialseg.demo import run_demo as demo

    demo(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "predict": run_predict,
        "serve": run_serve,
        "export-model": run_export_model,
        "demo": run_demo,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
