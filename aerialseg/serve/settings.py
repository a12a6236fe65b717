"""Settings of ``aerialseg serve`` (the command's flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """Everything the web service needs; the defaults are safe for a shared machine.

    Attributes:
        config, checkpoint, device, cfg_options: the model, loaded once at start-up (the config
            saved in the checkpoint is used when ``config`` is ``None``).
        host: bind address; ``127.0.0.1`` keeps the page local unless asked otherwise.
        max_upload_bytes: largest request body (the upload plus form overhead) accepted.
        max_pixels: largest image accepted, checked from the file header before decoding.
        window, overlap, bands, percentiles: as for ``aerialseg predict``.
        max_results: finished results kept in memory for download (oldest dropped first).
        max_result_bytes: memory bound of those results.
        max_pending: predictions running or queued at once; more get HTTP 503.
    """

    config: str | None = None
    checkpoint: str | None = None
    device: str = "cpu"
    cfg_options: dict | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000
    window: int = 480
    overlap: int = 96
    bands: tuple[int, ...] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    max_results: int = 32
    max_result_bytes: int = 512 * 1024 * 1024
    max_pending: int = 16
