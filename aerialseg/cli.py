"""The ``aerialseg`` command: ``predict`` on images, ``serve`` the web page, run the ``demo``.

A thin shell: each subcommand parses its flags and calls the package function that does the work
(:mod:`aerialseg.predict`, :mod:`aerialseg.serve`, :mod:`aerialseg.demo`).
"""

from __future__ import annotations

import argparse
import sys
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
        with open(args.expressions_file, encoding="utf-8") as file:
            expressions += [line.strip() for line in file if line.strip()]
    return expressions


def run_predict(args: argparse.Namespace) -> int:
    from aerialseg.predict import (
        InputImageError,
        PredictOptions,
        build_predictor,
        predict_file,
        safe_stem,
        validate_expressions,
    )

    try:
        expressions = validate_expressions(_read_expressions(args))
    except (ValueError, OSError) as error:
        print(f"aerialseg predict: error: {error}", file=sys.stderr)
        return 2
    stems = [safe_stem(path) for path in args.images]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        print(
            f"aerialseg predict: error: several inputs share the output name(s) {duplicates}; "
            "run them into different --out-dir folders",
            file=sys.stderr,
        )
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
    try:
        predictor = build_predictor(args.config, args.checkpoint, args.device, args.cfg_options)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        print(f"aerialseg predict: error: cannot load the model: {error}", file=sys.stderr)
        return 1
    failures = 0
    for path in args.images:
        try:
            result, written = predict_file(path, expressions, predictor, args.out_dir, options)
        except (InputImageError, ValueError) as error:
            failures += 1
            print(f"aerialseg predict: error: {error}", file=sys.stderr)
            continue
        print(f"{path}: {result.info.width} x {result.info.height} px")
        for expression, score, mask in zip(expressions, result.scores, result.masks):
            print(f"  {expression!r}: {int(mask.sum())} px, score {score:.3f}")
        print(f"  wrote {len(written)} files to {args.out_dir}")
    return 1 if failures else 0


def run_serve(args: argparse.Namespace) -> int:
    from aerialseg.serve import ServeSettings, serve

    settings = ServeSettings(
        config=args.config,
        checkpoint=args.checkpoint,
        device=args.device,
        cfg_options=args.cfg_options,
        host=args.host,
        port=args.port,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=int(args.max_megapixels * 1_000_000),
        window=args.window,
        overlap=args.overlap,
        bands=args.bands,
        percentiles=tuple(args.percentiles),
    )
    serve(settings)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from aerialseg.demo import run_demo as demo

    demo(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"predict": run_predict, "serve": run_serve, "demo": run_demo}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
