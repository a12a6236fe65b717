"""Product speed: windowed prediction of a large GeoTIFF (s/megapixel) and web latency under load.

    python benchmarks/predict_bench.py                          # tiny ClipSAM on CPU
    python benchmarks/predict_bench.py --model b --device cuda  # ClipSAM-b (real size) on a GPU

1. **Windowed prediction**: ``aerialseg.predict.predict_file`` on a synthetic 4-band 16-bit
   GeoTIFF (``--size`` px square, default 4096 = 16.8 MP) with ``--expressions`` expressions, in
   tiles of ``--window``/``--overlap``: everything the CLI does (read, stretch, tile, model, blend,
   mask PNGs, RLE, GeoJSON, mask GeoTIFF, overlay). The same run with a predictor that returns
   constant logits gives the pipeline's own overhead.
2. **Web latency**: the app on a local port, ``--clients`` concurrent clients each posting
   ``--requests`` one-window PNGs (``--web-size`` px) with two expressions; latency percentiles and
   throughput, beside the single-client latency.

The model is random-init (no downloads): the tiny one from ``aerialseg.models.tiny``, ClipSAM-b at
its real dimensions as in ``benchmarks/model_bench.py`` (whose config builder this script uses).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from aerialseg.apis import ReferringPrediction, ReferringSegmenter
from aerialseg.predict import PredictOptions, predict_file, tile_grid
from aerialseg.predict.export import encode_png
from aerialseg.predict.windows import prediction_logits
from aerialseg.serve import BackgroundServer, ServeSettings, create_app

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_bench import model_config  # noqa: E402

EXPRESSIONS = (
    "all buildings in the image",
    "the white car in the top left",
    "the largest water body",
    "all roads in the image",
)


class ConstantPredictor:
    """Returns zero logits instantly: what is left of the timing is the pipeline itself."""

    def predict(self, image, expressions):
        count, (height, width) = len(expressions), image.shape[:2]
        logits = np.zeros((count, height, width), np.float32)
        return ReferringPrediction(logits > 0, np.zeros(count, np.float32), logits)


def write_scene(path: Path, size: int, seed: int = 0) -> None:
    """A 4-band uint16 GeoTIFF (R, G, B, NIR): smooth terrain plus bright rectangles, tiled."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1500, 9000, size=(4, size // 64 + 2, size // 64 + 2)).astype(np.float32)
    profile = dict(
        driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500_000, 4_000_000, 0.5, 0.5), tiled=True, blockxsize=512,
        blockysize=512, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dataset:
        for row in range(0, size, 512):
            rows = np.arange(row, min(row + 512, size)) / 64
            cols = np.arange(size) / 64
            block = np.empty((4, len(rows), size), np.float32)
            for band in range(4):
                grid = coarse[band]
                r0, c0 = rows.astype(int), cols.astype(int)
                block[band] = grid[r0][:, c0]
            for _ in range(40):
                y, x = rng.integers(0, len(rows) - 8), rng.integers(0, size - 40)
                block[:3, y : y + 8, x : x + 40] = 30000
            window = rasterio.windows.Window(0, row, size, len(rows))
            dataset.write(block.astype(np.uint16), window=window)


def bench_windowed(predictor, args, root: Path) -> dict:
    scene = root / "scene.tif"
    write_scene(scene, args.size)
    options = PredictOptions(window=args.window, overlap=args.overlap, progress=False)
    expressions = list(EXPRESSIONS[: args.expressions])
    megapixels = args.size * args.size / 1e6
    timings = {}
    for name, model in (("pipeline only", ConstantPredictor()), ("with model", predictor)):
        started = time.perf_counter()
        result, written = predict_file(scene, expressions, model, root / name, options)
        timings[name] = time.perf_counter() - started
    tiles = len(tile_grid(args.size, args.size, args.window, args.overlap))
    return dict(
        megapixels=megapixels,
        tiles=tiles,
        seconds=timings["with model"],
        s_per_mp=timings["with model"] / megapixels,
        overhead_s_per_mp=timings["pipeline only"] / megapixels,
        files=len(written),
    )


def _post(url: str, body: bytes, content_type: str) -> float:
    host, port = url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    started = time.perf_counter()
    connection.request("POST", "/api/predict", body, {"Content-Type": content_type})
    response = connection.getresponse()
    response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"web request failed with HTTP {response.status}")
    return elapsed


def _multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "aerialseg-bench"
    text = "\n".join(EXPRESSIONS[:2])
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="expressions"\r\n\r\n{text}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="tile.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def bench_web(predictor, args) -> dict:
    rng = np.random.default_rng(1)
    image = encode_png(rng.integers(0, 256, (args.web_size, args.web_size, 3), np.uint8))
    body, content_type = _multipart(image)
    settings = ServeSettings(window=args.window, overlap=args.overlap, max_pending=args.clients * 2)
    with BackgroundServer(create_app(predictor, settings)) as server:
        _post(server.url, body, content_type)  # warm-up
        single = [_post(server.url, body, content_type) for _ in range(args.requests)]
        latencies: list[float] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(args.requests):
                elapsed = _post(server.url, body, content_type)
                with lock:
                    latencies.append(elapsed)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    latencies.sort()
    return dict(
        single_median=statistics.median(single),
        p50=latencies[len(latencies) // 2],
        p95=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        max=latencies[-1],
        throughput=len(latencies) / wall,
        requests=len(latencies),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "b", "l"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=4096, help="GeoTIFF side in pixels")
    parser.add_argument("--window", type=int, default=480)
    parser.add_argument("--overlap", type=int, default=96)
    parser.add_argument("--expressions", type=int, default=2, choices=range(1, 5))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--web-size", type=int, default=480)
    args = parser.parse_args(argv)
    if args.model == "tiny" and args.device.startswith("cuda"):
        print("note: the tiny model is meant for CPU; timing it on", args.device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cfg = model_config(args.model, root)
        torch.manual_seed(0)
        segmenter = ReferringSegmenter(cfg, device=args.device, amp=args.device.startswith("cuda"))
        warm = np.zeros((args.window, args.window, 3), np.uint8)
        prediction_logits(segmenter.predict(warm, ["warm-up"]), 1, args.window, args.window)
        windowed = bench_windowed(segmenter, args, root)
        web = bench_web(segmenter, args)

    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.machine()}, {os.cpu_count()} logical CPUs"
    )
    print(f"\n## aerialseg predict / serve: ClipSAM-{args.model} on {args.device} ({device})")
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n")
    print("| windowed prediction | value |")
    print("|---|---|")
    print(
        f"| scene | {args.size} x {args.size} px ({windowed['megapixels']:.1f} MP), 4-band uint16 |"
    )
    print(f"| tiles | {windowed['tiles']} of {args.window} px, overlap {args.overlap} |")
    print(f"| expressions | {args.expressions} |")
    print(f"| total | {windowed['seconds']:.1f} s |")
    print(f"| **seconds per megapixel** | **{windowed['s_per_mp']:.2f}** |")
    print(f"| of which pipeline (no model) | {windowed['overhead_s_per_mp']:.3f} s/MP |")
    print()
    print(f"| web, {args.clients} concurrent clients x {args.requests} requests | value |")
    print("|---|---|")
    print(f"| request | {args.web_size} x {args.web_size} PNG, 2 expressions |")
    print(f"| single-client latency (median) | {web['single_median'] * 1000:.0f} ms |")
    print(f"| p50 latency under load | {web['p50'] * 1000:.0f} ms |")
    print(f"| p95 latency under load | {web['p95'] * 1000:.0f} ms |")
    print(f"| max latency | {web['max'] * 1000:.0f} ms |")
    print(f"| throughput | {web['throughput']:.2f} requests/s ({web['requests']} requests) |")


if __name__ == "__main__":
    main()
