"""Memory of one prediction: peak bytes per pixel of ``aerialseg.predict.predict_file``.

    python benchmarks/predict_memory_bench.py [--size 2048] [--counts 1 2 4]

For N expressions on a ``--size``² GeoTIFF, the peak of Python/numpy allocations (``tracemalloc``;
numpy reports its buffers to it) while ``predict_file`` reads, predicts in 480 px windows, blends
and writes every output (mask PNGs, COCO RLE, GeoJSON, mask GeoTIFF, overlay). The predictor
returns fixed logits instantly (a half-plane mask per expression), so what is measured is the
pipeline's own memory, the part that grows with the image; the model's activations are per window.

Side by side, the same mask GeoTIFF encoded the way the export did before issue 15
(``np.where(masks, 255, 0)``: an int64 temporary of 8 bytes per pixel and expression).
The web server's per-request limit (``--max-expression-megapixels``) is set from these figures.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import tempfile
import tracemalloc

# One thread for every numeric library, fixed before they load: a memory figure must not depend
# on how many per-thread buffers the machine's core count happens to give.
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from aerialseg.predict import PredictOptions, open_raster, predict_file  # noqa: E402
from aerialseg.predict.export import masks_geotiff  # noqa: E402
from aerialseg.predict.windows import MASK_LOGIT  # noqa: E402


class HalfPlanePredictor:
    """Positive logits on the left half of every window: non-empty masks, no model cost."""

    def predict(self, image, expressions):
        count, (height, width) = len(expressions), image.shape[:2]
        logits = np.full((count, height, width), -MASK_LOGIT, np.float32)
        logits[:, :, : width // 2] = MASK_LOGIT
        return _Prediction(logits > 0, np.full(count, 0.5, np.float32), logits)


class _Prediction:
    def __init__(self, masks, scores, logits):
        self.masks, self.scores, self.logits = masks, scores, logits


def write_scene(path: str, size: int) -> None:
    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff",
        height=size,
        width=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_000, 4_000_000, 0.5, 0.5),
        tiled=True,
    )
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(rng.integers(0, 255, (3, size, size), dtype=np.uint8))


def peak_bytes(function) -> int:
    gc.collect()
    tracemalloc.start()
    function()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def old_masks_geotiff(info, expressions, masks) -> bytes:
    """The export before issue 15: all bands at once through an int64 ``np.where``."""
    profile = dict(
        driver="GTiff",
        height=info.height,
        width=info.width,
        count=len(masks),
        dtype="uint8",
        crs=info.crs,
        transform=info.transform,
        compress="deflate",
    )
    with rasterio.io.MemoryFile() as memory:
        with memory.open(**profile) as dataset:
            dataset.write(np.where(masks, 255, 0).astype(np.uint8))
        return memory.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    import torch  # loaded by aerialseg already; pinned like the libraries above

    torch.set_num_threads(1)
    pixels = args.size**2
    print(
        f"# predict_file memory, {args.size} x {args.size} = {pixels / 1e6:.1f} MP, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print("| expressions N | peak (MB) | bytes / pixel | 5N + 5 | old GeoTIFF export / new |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        scene = os.path.join(folder, "scene.tif")
        write_scene(scene, args.size)
        options = PredictOptions(window=480, overlap=96, progress=False)
        for count in args.counts:
            expressions = [f"expression {k}" for k in range(count)]
            out = os.path.join(folder, f"out{count}")
            results = []

            def run(out=out, expressions=expressions, results=results) -> None:
                results.append(
                    predict_file(scene, expressions, HalfPlanePredictor(), out, options)[0]
                )

            peak = peak_bytes(run)
            result = results.pop()
            with open_raster(scene) as source:
                info = source.info
            masks = result.masks
            del result
            encode = (info, expressions, masks)
            new = peak_bytes(functools.partial(masks_geotiff, *encode))
            old = peak_bytes(functools.partial(old_masks_geotiff, *encode))
            print(
                f"| {count} | {peak / 1e6:.0f} | {peak / pixels:.1f} | {5 * count + 5} | "
                f"{old / 1e6:.0f} MB / {new / 1e6:.0f} MB = {old / max(new, 1):.1f}x |"
            )


if __name__ == "__main__":
    main()
