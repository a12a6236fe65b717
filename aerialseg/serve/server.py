"""Running the web app: ``serve`` for the command line, ``BackgroundServer`` for tests."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

from aerialseg.serve.app import create_app
from aerialseg.serve.settings import ServeSettings

logger = logging.getLogger("aerialseg.serve")


def serve(settings: ServeSettings, predictor=None) -> None:
    """Serve the page until interrupted (``aerialseg serve``); the model is loaded once, here
    unless ``predictor`` is given."""
    from aerialseg.predict import build_predictor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if predictor is None:
        predictor = build_predictor(
            settings.config,
            settings.checkpoint,
            settings.device,
            settings.cfg_options,
            pretrained_root=settings.pretrained_root,
            allow_partial=settings.allow_partial,
        )
    app = create_app(predictor, settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s: anyone who can reach this address can use the model", settings.host
        )
    print(f"AerialSeg web page: http://{settings.host}:{settings.port}/  (Ctrl+C to stop)")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="info",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )


class BackgroundServer:
    """Serve an app from a daemon thread on a free local port; a context manager.

    >>> with BackgroundServer(create_app(predictor)) as server:  # doctest: +SKIP
    ...     urllib.request.urlopen(server.url + "/api/info")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
