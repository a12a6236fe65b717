"""Reading PNG, JPEG and GeoTIFF inputs of any size as 8-bit RGB windows.

The model takes ``H x W x 3`` uint8 RGB. Aerial imagery is often something else, so every input goes
through one documented normalisation (see ``docs/cli.md``):

* **Band choice.** 1 band: replicated to grey RGB (a palette band is expanded through its colour
  table). 2 bands: the first (grey + alpha). 3 bands: as stored. 4 or more bands: the bands whose
  colour interpretation is red, green and blue, else bands 1, 2, 3 for 4-band images (RGB + NIR or
  RGBA) and an error asking for ``--bands`` above 4. ``bands=(4, 3, 2)`` picks bands explicitly
  (1-based, GDAL order); one index gives a grey image.
* **Bit depth.** 8-bit data is used as stored. Any other type (16-bit, 32-bit, float) is stretched
  linearly per band between its ``percentiles`` (2 and 98 by default) to 0..255 and clipped, the
  statistics coming from a decimated read of the valid pixels of the whole raster, so every window
  of a large scene uses the same stretch.
* **Validity.** Pixels that GDAL masks (nodata value, alpha band, internal mask) and non-finite
  floats read as black and are reported invalid; predictions there are cleared.
* **Georeference.** The geotransform and CRS as stored; a GeoTIFF with only ground control points
  is georeferenced by their affine fit when every GCP lies within half a pixel of it, and
  otherwise reported as not georeferenced, with a note that says why (no GeoJSON is written).

Only PNG, JPEG and TIFF/GeoTIFF files are opened (recognised by their first bytes, then opened with
that one GDAL driver), and they are read through rasterio window by window, so a large GeoTIFF is
never held in memory as more than one window of input.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.io import MemoryFile
from rasterio.transform import from_gcps
from rasterio.windows import Window

# GDAL can open hundreds of formats, some of which reference other files (VRT). An input is only
# opened when its first bytes are one of these signatures, and then with that one driver.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIGNATURES = (
    (PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "GTiff"),
    (b"MM\x00*", "GTiff"),
    (b"II+\x00", "GTiff"),  # BigTIFF
    (b"MM\x00+", "GTiff"),
)
# Plain PNG/JPEG inputs are normal here and RasterInfo.georeferenced reports the difference; the
# filter is global because warnings.catch_warnings is not thread-safe (the web app reads in
# worker threads).
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
STATS_SIDE = 1024  # longest side of the decimated read behind the percentile stretch
# Ground control points are used as an affine georeference when they fit one this well (pixels);
# GCPs of a warped or rotated-with-distortion scan need gdalwarp's polynomial/thin-plate fit.
GCP_TOLERANCE = 0.5


class InputImageError(ValueError):
    """An input image is missing, empty, corrupt or cannot be turned into RGB."""


@dataclass(frozen=True)
class RasterInfo:
    """What the outputs need to know about an input raster."""

    name: str
    height: int
    width: int
    band_count: int
    dtype: str
    bands: tuple[int, ...]
    crs: rasterio.crs.CRS | None
    transform: rasterio.Affine
    georeference_note: str | None = None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and not self.transform.is_identity


class RasterSource:
    """An open image that hands out normalised RGB windows.

    Use as a context manager, or call :meth:`close`. Build it with :func:`open_raster`.
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetReader,
        name: str,
        bands: Sequence[int] | None = None,
        percentiles: tuple[float, float] = (2.0, 98.0),
        memory_file: MemoryFile | None = None,
    ) -> None:
        self._dataset = dataset
        self._memory_file = memory_file
        self.name = name
        self._palette = None
        self.bands = self._select_bands(bands)
        self._has_mask = any(
            MaskFlags.all_valid not in dataset.mask_flag_enums[b - 1] for b in self.bands
        )
        self._ranges = None
        if any(dataset.dtypes[b - 1] != "uint8" for b in self.bands):
            self._ranges = self._percentile_ranges(percentiles)
        self._crs, self._transform, self._georeference_note = self._georeferencing()

    # ------------------------------------------------------------------ construction helpers
    def _error(self, message: str) -> InputImageError:
        return InputImageError(f"'{self.name}': {message}")

    def _select_bands(self, bands: Sequence[int] | None) -> tuple[int, ...]:
        dataset = self._dataset
        count = dataset.count
        if bands is not None:
            bands = tuple(int(b) for b in bands)
            if len(bands) not in (1, 3):
                raise self._error(f"--bands needs 1 or 3 band numbers, got {list(bands)}")
            bad = [b for b in bands if not 1 <= b <= count]
            if bad:
                raise self._error(
                    f"--bands {','.join(map(str, bands))}: band(s) {bad} do not exist; the image "
                    f"has {count} band{'s' if count != 1 else ''} (numbered from 1)"
                )
            return bands
        interp = list(dataset.colorinterp)
        if count == 1 and interp[0] == ColorInterp.palette:
            self._palette = self._palette_table()
            return (1,)
        if count in (1, 2):
            return (1,)
        if count == 3:
            return (1, 2, 3)
        rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        if all(colour in interp for colour in rgb):
            return tuple(interp.index(colour) + 1 for colour in rgb)
        if count == 4:
            return (1, 2, 3)
        raise self._error(
            f"the image has {count} bands and none is labelled red/green/blue: choose three "
            "with --bands R,G,B (1-based, e.g. --bands 4,3,2)"
        )

    def _palette_table(self) -> np.ndarray:
        colormap = self._dataset.colormap(1)
        table = np.zeros((256, 3), np.uint8)
        for index, rgba in colormap.items():
            if 0 <= index < 256:
                table[index] = rgba[:3]
        return table

    def _percentile_ranges(self, percentiles: tuple[float, float]) -> np.ndarray:
        low, high = percentiles
        if not 0.0 <= low < high <= 100.0:
            raise self._error(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
        scale = min(1.0, STATS_SIDE / max(self.height, self.width))
        shape = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        ranges = np.zeros((len(self.bands), 2), np.float64)
        for i, band in enumerate(self.bands):
            values = self._read(
                lambda b=band: self._dataset.read(
                    b, out_shape=shape, resampling=Resampling.nearest, masked=True
                )
            )
            valid = values.compressed().astype(np.float64)
            valid = valid[np.isfinite(valid)]
            if valid.size == 0:
                ranges[i] = (0.0, 1.0)
                continue
            lo, hi = np.percentile(valid, [low, high])
            ranges[i] = (lo, hi if hi > lo else lo + 1.0)
        return ranges

    def _georeferencing(self) -> tuple:
        """``(crs, transform, note)``: the geotransform, else an affine fit of the ground control
        points when they fit one to within :data:`GCP_TOLERANCE` pixels, else no georeference
        and a note saying why (GeoJSON and the mask GeoTIFF are then not written)."""
        dataset = self._dataset
        if dataset.crs is not None and not dataset.transform.is_identity:
            return dataset.crs, dataset.transform, None
        gcps, gcp_crs = dataset.gcps
        if not gcps or gcp_crs is None:
            return dataset.crs, dataset.transform, None
        if len(gcps) < 3:
            return None, dataset.transform, self._gcp_note(f"only {len(gcps)} GCPs")
        transform = from_gcps(gcps)
        inverse = ~transform
        residual = max(
            float(np.hypot(*np.subtract(inverse * (gcp.x, gcp.y), (gcp.col, gcp.row))))
            for gcp in gcps
        )
        if residual > GCP_TOLERANCE:
            return (
                None,
                dataset.transform,
                self._gcp_note(
                    f"its {len(gcps)} GCPs do not fit an affine grid "
                    f"(off by up to {residual:.1f} px)"
                ),
            )
        return gcp_crs, transform, None

    def _gcp_note(self, reason: str) -> str:
        return (
            f"'{self.name}' is georeferenced only by ground control points and {reason}: no "
            "GeoJSON or mask GeoTIFF was written. Warp it onto a grid first, e.g. "
            "'gdalwarp -r near in.tif gridded.tif', and predict on that."
        )

    def _read(self, reader):
        try:
            return reader()
        except (RasterioError, OSError) as error:
            raise self._error(f"the file is truncated or corrupt ({_first_line(error)})") from error

    # ------------------------------------------------------------------ public interface
    @property
    def height(self) -> int:
        return self._dataset.height

    @property
    def width(self) -> int:
        return self._dataset.width

    @property
    def info(self) -> RasterInfo:
        dataset = self._dataset
        return RasterInfo(
            name=self.name,
            height=dataset.height,
            width=dataset.width,
            band_count=dataset.count,
            dtype=dataset.dtypes[self.bands[0] - 1],
            bands=self.bands,
            crs=self._crs,
            transform=self._transform,
            georeference_note=self._georeference_note,
        )

    def read_window(
        self, row: int, col: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read a window as ``(rgb, valid)``.

        Returns:
            rgb: ``height x width x 3`` uint8 RGB.
            valid: ``height x width`` bool, or ``None`` when every pixel is valid.
        """
        window = Window(col, row, width, height)
        return self._normalise(window=window)

    def read_preview(self, max_side: int) -> np.ndarray:
        """The whole image as RGB, decimated so that its longest side is at most ``max_side``."""
        scale = min(1.0, max_side / max(self.height, self.width))
        shape = (max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        rgb, _ = self._normalise(out_shape=shape)
        return rgb

    def _normalise(self, **read_kwargs) -> tuple[np.ndarray, np.ndarray | None]:
        def read(band: int) -> np.ndarray:
            if "out_shape" in read_kwargs:
                return self._dataset.read(band, resampling=Resampling.average, **read_kwargs)
            return self._dataset.read(band, **read_kwargs)

        raw = self._read(lambda: np.stack([read(b) for b in self.bands]))
        valid = None
        if self._has_mask:
            masks = self._read(
                lambda: np.stack([self._dataset.read_masks(b, **read_kwargs) for b in self.bands])
            )
            valid = (masks > 0).all(axis=0)
        if self._palette is not None:
            rgb = self._palette[raw[0]]
        else:
            if self._ranges is None:
                scaled = raw
            else:
                finite = np.isfinite(raw).all(axis=0) if raw.dtype.kind == "f" else None
                if finite is not None and not finite.all():
                    valid = finite if valid is None else valid & finite
                    raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
                low = self._ranges[:, 0, None, None]
                high = self._ranges[:, 1, None, None]
                stretched = (raw.astype(np.float64) - low) / (high - low)
                scaled = np.round(np.clip(stretched, 0.0, 1.0) * 255.0).astype(np.uint8)
            rgb = np.moveaxis(scaled, 0, -1)
            if rgb.shape[-1] == 1:
                rgb = np.repeat(rgb, 3, axis=-1)
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        if valid is not None:
            rgb[~valid] = 0
        return rgb, valid

    def read_all(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole image at full resolution (small inputs only)."""
        return self.read_window(0, 0, self.height, self.width)

    def close(self) -> None:
        self._dataset.close()
        if self._memory_file is not None:
            self._memory_file.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_raster(
    source: str | os.PathLike | bytes,
    bands: Sequence[int] | None = None,
    percentiles: tuple[float, float] = (2.0, 98.0),
    name: str | None = None,
    max_pixels: int | None = None,
) -> RasterSource:
    """Open a PNG, JPEG or (Geo)TIFF from a path or from bytes (an upload).

    Args:
        source: a file path, or the file's bytes.
        bands: 1-based band numbers to use as RGB (3) or grey (1); ``None`` chooses (module doc).
        percentiles: stretch range for non-8-bit data.
        name: the name used in error messages (defaults to the path, or ``'upload'``).
        max_pixels: refuse images with more pixels (protects servers from decompression bombs;
            checked from the header, before any pixel is decoded).

    Raises:
        InputImageError: the file is missing, empty, not an image, corrupt, too large, or its
            bands cannot be turned into RGB. The message names the file and the problem.
    """
    memory_file = None
    if isinstance(source, bytes | bytearray | memoryview):
        name = name or "upload"
        data = bytes(source)
        if len(data) == 0:
            raise InputImageError(f"'{name}': the file is empty (0 bytes)")
        driver = image_driver(data[:16], name)
        if driver == "PNG":
            check_png_chunks(io.BytesIO(data), name)
        memory_file = MemoryFile(data)
    else:
        path = os.fspath(source)
        name = name or path
        if not os.path.exists(path):
            raise InputImageError(f"'{name}': input image not found")
        if os.path.isdir(path):
            raise InputImageError(f"'{name}': is a directory, not an image file")
        if os.path.getsize(path) == 0:
            raise InputImageError(f"'{name}': the file is empty (0 bytes)")
        with open(path, "rb") as file:
            driver = image_driver(file.read(16), name)
            if driver == "PNG":
                file.seek(0)
                check_png_chunks(file, name)
    try:
        if memory_file is not None:
            dataset = memory_file.open(driver=driver)
        else:
            dataset = rasterio.open(path, driver=driver)
    except (RasterioIOError, RasterioError, OSError) as error:
        if memory_file is not None:
            memory_file.close()
        raise InputImageError(
            f"'{name}': cannot read the file as an image (PNG, JPEG or GeoTIFF expected): "
            f"{_first_line(error)}"
        ) from error
    try:
        if dataset.count == 0 or dataset.width == 0 or dataset.height == 0:
            raise InputImageError(f"'{name}': the image has no pixels or no bands")
        if max_pixels is not None and dataset.width * dataset.height > max_pixels:
            raise InputImageError(
                f"'{name}': the image is {dataset.width} x {dataset.height} pixels, more than "
                f"the limit of {max_pixels:,} pixels"
            )
        return RasterSource(dataset, name, bands, percentiles, memory_file)
    except Exception:
        dataset.close()
        if memory_file is not None:
            memory_file.close()
        raise


def image_driver(head: bytes, name: str) -> str:
    """The GDAL driver for a file that starts with ``head``, or an error naming the file."""
    for signature, driver in SIGNATURES:
        if head.startswith(signature):
            return driver
    raise InputImageError(
        f"'{name}': not a PNG, JPEG or TIFF/GeoTIFF file (it starts with bytes {head[:8]!r})"
    )


def check_png_chunks(file: BinaryIO, name: str) -> None:
    """Walk a PNG's chunks up to ``IEND`` checking lengths and CRCs.

    GDAL's PNG driver returns garbage pixels, without an error, for a truncated PNG; this catches
    truncation and corruption without decoding the pixels.
    """
    file.read(len(PNG_SIGNATURE))
    while True:
        header = file.read(8)
        if len(header) < 8:
            raise InputImageError(f"'{name}': the PNG file is truncated (no IEND chunk)")
        length, kind = struct.unpack(">I4s", header)
        crc = zlib.crc32(kind)
        chunk = kind.decode("latin-1")
        remaining = length
        while remaining:
            block = file.read(min(remaining, 1 << 20))
            if not block:
                raise InputImageError(f"'{name}': the PNG file is truncated (in a {chunk} chunk)")
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
        stored = file.read(4)
        if len(stored) < 4:
            raise InputImageError(f"'{name}': the PNG file is truncated (in a {chunk} chunk)")
        if struct.unpack(">I", stored)[0] != crc:
            raise InputImageError(f"'{name}': the PNG file is corrupt (bad CRC in a {chunk} chunk)")
        if kind == b"IEND":
            return


def _first_line(error: BaseException) -> str:
    # rasterio's read errors say "See previous exception": GDAL's own message is in the chain.
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
