"""Settings of ``aerialseg serve`` (the command's flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """Everything the web service needs; the defaults are safe for a shared machine.

    Attributes:
        config, checkpoint, device, cfg_options, pretrained_root, allow_partial: the model,
            loaded once at start-up, as by ``aerialseg predict`` (the config saved in the
            checkpoint is used when ``config`` is ``None``).
        host: bind address; ``127.0.0.1`` keeps the page local unless asked otherwise.
        max_upload_bytes: largest request body (the upload plus form overhead) accepted.
        max_pixels: largest image accepted, checked from the file header before decoding.
        max_expressions: most expressions in one request (HTTP 413 above).
        max_expression_pixels: most expressions x image pixels in one request, checked from the
            header before any work (HTTP 413 above): a prediction holds about 5 bytes per
            expression-pixel (float32 logits, bool masks) plus 5 per image pixel, so the
            default 200 M is about 1-1.5 GB.
        window, overlap, bands, percentiles: as for ``aerialseg predict``.
        max_results: finished results kept in memory for download (oldest dropped first).
        max_result_bytes: memory bound of those results.
        max_pending: predictions running or queued at once; more get HTTP 503.
    """

    config: str | None = None
    checkpoint: str | None = None
    device: str = "cpu"
    cfg_options: dict | None = None
    pretrained_root: str | None = None
    allow_partial: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000
    max_expressions: int = 32
    max_expression_pixels: int = 200_000_000
    window: int = 480
    overlap: int = 96
    bands: tuple[int, ...] | None = None
    percentiles: tuple[float, float] = (2.0, 98.0)
    max_results: int = 32
    max_result_bytes: int = 512 * 1024 * 1024
    max_pending: int = 16
