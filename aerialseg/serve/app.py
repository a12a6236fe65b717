"""The web page and its JSON API (FastAPI), around one predictor loaded once.

Routes:

========  ==================================  ===============================================
GET       ``/``                               the page (``static/index.html``)
GET       ``/static/app.js``, ``style.css``   its script and style (fixed names only)
GET       ``/api/info``                       limits and model, for the page and for clients
POST      ``/api/predict``                    multipart ``image`` file + ``expressions`` text
                                              (one per line) -> JSON with download links
GET       ``/api/results/{id}/{name}``        one output file of a recent result
========  ==================================  ===============================================

Errors are JSON ``{"detail": "..."}`` with 400 (bad image, bad form, no expression), 404, 413
(upload over the limit), 503 (too many predictions queued) or 500 (logged, generic message).
Predictions run in worker threads, one at a time on the model (a lock), so the page, downloads and
uploads keep being served while a large scene is segmented.
"""

from __future__ import annotations

import logging
import os
import threading
import time
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
    app.state.store = store
    app.state.settings = settings

    def run_prediction(data: bytes, name: str, expressions: list[str]):
        with (
            open_raster(
                data,
                bands=options.bands,
                percentiles=options.percentiles,
                name=name,
                max_pixels=options.max_pixels,
            ) as source,
            model_lock,
        ):
            return predict_source(source, expressions, predictor, options, safe_stem(name))

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
            "window": settings.window,
            "overlap": settings.overlap,
        }

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
                max_files=1, max_fields=2, max_part_size=MAX_EXPRESSIONS_BYTES
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
            name = safe_filename(upload.filename or "upload")
            data = await upload.read()
            text = form.get("expressions")
        finally:
            await form.close()
        if not isinstance(text, str):
            raise HTTPException(400, "no expressions: send them in the form field 'expressions'")
        try:
            expressions = validate_expressions([line for line in text.splitlines() if line.strip()])
        except ValueError as error:
            raise HTTPException(400, str(error)) from error
        if not pending.acquire(blocking=False):
            raise HTTPException(503, "the server is busy with other predictions; try again soon")
        try:
            result = await run_in_threadpool(run_prediction, data, name, expressions)
        except (InputImageError, ValueError) as error:
            raise HTTPException(400, str(error)) from error
        except Exception:
            logger.exception("prediction failed for '%s'", name)
            message = "internal error while predicting; see the server log"
            raise HTTPException(500, message) from None
        finally:
            pending.release()
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
                        "mask": link(mask_name),
                    }
                    for index, (expression, score, mask, mask_name) in enumerate(
                        zip(expressions, result.scores, result.masks, result.mask_files)
                    )
                ],
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
