"""The web page and its JSON API (FastAPI), around one predictor loaded once.

Routes:

========  ==================================  ===============================================
GET       ``/``                               the page (``static/index.html``)
GET       ``/static/app.js``, ``style.css``   its script and style (fixed names only)
GET       ``/api/info``                       limits and model, for the page and for clients
POST      ``/api/predict``                    multipart ``image`` file + ``expressions`` text
                                              (one per line) [+ ``job`` id] -> JSON with
                                              download links
GET       ``/api/progress/{job}``             ``{phase, done, total}`` of a running request
GET       ``/api/results/{id}/{name}``        one output file of a recent result
========  ==================================  ===============================================

Errors are JSON ``{"detail": "..."}`` with 400 (bad image, bad form, no expression), 404, 413
(upload, expression count or expression-pixels over the limit, naming it), 503 (too many
predictions queued) or 500 (logged, generic message). The limits are checked before any work: the
expression count before the image is read, expressions x pixels from the image header.
Predictions run in worker threads, one at a time on the model (a lock), so the page, downloads and
uploads keep being served while a large scene is segmented.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aerialseg.predict import (
    InputImageError,
    PredictOptions,
    open_raster,
    predict_source,
    safe_filename,
    safe_stem,
    validate_expressions,
)
from aerialseg.predict.overlay import hex_color
from aerialseg.predict.windows import Predictor
from aerialseg.serve.limits import BodyTooLarge, UploadLimitMiddleware
from aerialseg.serve.settings import ServeSettings
from aerialseg.serve.store import ResultStore

logger = logging.getLogger("aerialseg.serve")

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
MEDIA_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".geojson": "application/geo+json",
    ".tif": "image/tiff",
}
MAX_EXPRESSIONS_BYTES = 64 * 1024
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_JOBS = 64


class RequestTooLarge(ValueError):
    """A request over one of the documented limits (answered with HTTP 413)."""


class ProgressBoard:
    """Progress of running requests by the client's job id (bounded, thread-safe)."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def update(self, job: str | None, phase: str, done: int = 0, total: int = 0) -> None:
        if job is None:
            return
        with self._lock:
            self._jobs[job] = {"phase": phase, "done": done, "total": total}
            self._jobs.move_to_end(job)
            while len(self._jobs) > MAX_JOBS:
                self._jobs.popitem(last=False)

    def get(self, job: str) -> dict | None:
        with self._lock:
            entry = self._jobs.get(job)
            return dict(entry) if entry else None


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    ),
]


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every response (pure ASGI: no task groups)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def static_text(name: str) -> str:
    return resources.files("aerialseg.serve").joinpath("static", name).read_text("utf-8")


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving ``predictor`` (anything with ``predict(image, expressions)``)."""
    settings = settings or ServeSettings()
    app = FastAPI(title="AerialSeg", debug=False, docs_url=None, redoc_url=None, openapi_url=None)
    store = ResultStore(settings.max_results, settings.max_result_bytes)
    static = {name: static_text(name) for name in STATIC_FILES}
    options = PredictOptions(
        window=settings.window,
        overlap=settings.overlap,
        bands=settings.bands,
        percentiles=settings.percentiles,
        progress=False,
        max_pixels=settings.max_pixels,
    )
    model_lock = threading.Lock()
    pending = threading.BoundedSemaphore(settings.max_pending)
    progress = ProgressBoard()
    app.state.store = store
    app.state.settings = settings

    def check_expression_pixels(count: int, width: int, height: int) -> None:
        pixels = count * width * height
        if pixels > settings.max_expression_pixels:
            raise RequestTooLarge(
                f"{count} expressions x {width} x {height} pixels = {pixels:,} "
                f"expression-pixels, more than the server's limit of "
                f"{settings.max_expression_pixels:,} per request: send fewer expressions or a "
                "smaller image"
            )

    def run_prediction(data: bytes, name: str, expressions: list[str], job: str | None):
        with open_raster(
            data,
            bands=options.bands,
            percentiles=options.percentiles,
            name=name,
            max_pixels=options.max_pixels,
        ) as source:
            check_expression_pixels(len(expressions), source.width, source.height)
            progress.update(job, "queued")
            with model_lock:
                return predict_source(
                    source,
                    expressions,
                    predictor,
                    options,
                    safe_stem(name),
                    on_tile=lambda done, total: progress.update(job, "predict", done, total),
                    on_phase=lambda phase: progress.update(job, phase),
                )

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(static["index.html"])

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC_FILES or name == "index.html":
            raise HTTPException(404, "no such file")
        return Response(static[name], media_type=STATIC_FILES[name])

    @app.get("/api/info")
    def info() -> dict:
        return {
            "model": os.path.basename(settings.config or settings.checkpoint or "model"),
            "checkpoint": os.path.basename(settings.checkpoint) if settings.checkpoint else None,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_expressions": settings.max_expressions,
            "max_expression_pixels": settings.max_expression_pixels,
            "text_length": getattr(predictor, "text_length", None),
            "window": settings.window,
            "overlap": settings.overlap,
        }

    @app.get("/api/progress/{job}")
    def job_progress(job: str) -> dict:
        entry = progress.get(job) if JOB_ID.match(job) else None
        if entry is None:
            raise HTTPException(404, "no such running request")
        return entry

    @app.post("/api/predict")
    async def predict(request: Request) -> JSONResponse:
        started = time.perf_counter()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(
                400,
                "the request is not a valid upload form: send multipart/form-data with the "
                "fields 'image' and 'expressions'",
            )
        try:
            form = await request.form(
                max_files=1, max_fields=3, max_part_size=MAX_EXPRESSIONS_BYTES
            )
        except BodyTooLarge:
            raise
        except HTTPException as error:
            message = f"the request is not a valid upload form: {error.detail}"
            raise HTTPException(400, message) from error
        except Exception as error:
            raise HTTPException(400, f"the request is not a valid upload form: {error}") from error
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "no image: send the file in the form field 'image'")
            text = form.get("expressions")
            if not isinstance(text, str):
                raise HTTPException(
                    400, "no expressions: send them in the form field 'expressions'"
                )
            try:
                lines = [line for line in text.splitlines() if line.strip()]
                expressions = validate_expressions(lines)
            except ValueError as error:
                raise HTTPException(400, str(error)) from error
            if len(expressions) > settings.max_expressions:
                raise HTTPException(
                    413,
                    f"{len(expressions)} expressions in one request, more than the server's "
                    f"limit of {settings.max_expressions}: split them over several requests",
                )
            job = form.get("job")
            job = job if isinstance(job, str) and JOB_ID.match(job) else None
            name = safe_filename(upload.filename or "upload")
            data = await upload.read()
        finally:
            await form.close()
        warnings = getattr(predictor, "truncation_warnings", lambda _: [])(expressions)
        if not pending.acquire(blocking=False):
            raise HTTPException(503, "the server is busy with other predictions; try again soon")
        try:
            progress.update(job, "read")
            result = await run_in_threadpool(run_prediction, data, name, expressions, job)
        except RequestTooLarge as error:
            raise HTTPException(413, str(error)) from error
        except (InputImageError, ValueError) as error:
            raise HTTPException(400, str(error)) from error
        except Exception:
            logger.exception("prediction failed for '%s'", name)
            message = "internal error while predicting; see the server log"
            raise HTTPException(500, message) from None
        finally:
            pending.release()
            progress.update(job, "done")
        result_id = store.add(result.files)

        def link(file_name: str) -> dict:
            return {"name": file_name, "url": f"/api/results/{result_id}/{file_name}"}

        labels = {"predictions": "COCO RLE JSON", "geojson": "GeoJSON", "masks_tif": "Mask GeoTIFF"}
        elapsed = time.perf_counter() - started
        logger.info(
            "'%s' %dx%d, %d expression(s): %.2f s",
            name,
            result.info.width,
            result.info.height,
            len(expressions),
            elapsed,
        )
        return JSONResponse(
            {
                "id": result_id,
                "elapsed_s": round(elapsed, 3),
                "image": {
                    "name": name,
                    "width": result.info.width,
                    "height": result.info.height,
                    "bands": list(result.info.bands),
                    "dtype": result.info.dtype,
                    "georeferenced": result.info.georeferenced,
                    "crs": result.info.crs.to_string() if result.info.georeferenced else None,
                },
                "predictions": [
                    {
                        "index": index,
                        "expression": expression,
                        "score": round(float(score), 4),
                        "area": int(mask.sum()),
                        "area_m2": None if area_m2 is None else round(area_m2, 2),
                        "color": hex_color(color),
                        "mask": link(mask_name),
                    }
                    for index, (expression, score, mask, area_m2, color, mask_name) in enumerate(
                        zip(
                            expressions,
                            result.scores,
                            result.masks,
                            result.areas_m2,
                            result.colors,
                            result.mask_files,
                        )
                    )
                ],
                "warnings": warnings + result.notes,
                "overlay": link(result.outputs["overlay"]),
                "downloads": [
                    dict(link(result.outputs[kind]), label=label)
                    for kind, label in labels.items()
                    if kind in result.outputs
                ],
            }
        )

    @app.get("/api/results/{result_id}/{name}")
    def result_file(result_id: str, name: str) -> Response:
        data = store.get(result_id, name)
        if data is None:
            raise HTTPException(
                404,
                f"no such result file; the server keeps the last {settings.max_results} results",
            )
        suffix = os.path.splitext(name)[1]
        return Response(
            data,
            media_type=MEDIA_TYPES.get(suffix, "application/octet-stream"),
            headers={"content-disposition": f'inline; filename="{name}"'},
        )

    # Inside ServerErrorMiddleware, so that a body over the limit becomes a 413, not a 500.
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
