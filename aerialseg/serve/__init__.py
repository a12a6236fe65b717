"""``aerialseg serve``: the web page for uploading an image, typing expressions and downloading
masks, overlays and GeoJSON (FastAPI + uvicorn; see ``docs/web.md``)."""

from aerialseg.serve.app import create_app
from aerialseg.serve.server import BackgroundServer, serve
from aerialseg.serve.settings import ServeSettings

__all__ = ["BackgroundServer", "ServeSettings", "create_app", "serve"]
