"""``aerialseg serve``: the page in a real headless Chromium, and the HTTP API's limits and safety.

The browser is Debian's ``chromium`` (``make install`` installs it), driven by Playwright's Python
package without Playwright's own browser downloads.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from shapely.geometry import shape

from aerialseg.predict.overlay import PALETTE
from aerialseg.serve import BackgroundServer, ServeSettings, create_app
from tests.product.scenes import ORIGIN, PIXEL, colour_scene, multipart, png_bytes, write_geotiff

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UPLOAD_LIMIT = 2 * 1024 * 1024
ARTIFACTS = Path(__file__).resolve().parents[2] / "work_dirs" / "test-artifacts"


class SerialisationProbe:
    """Wraps a predictor, counting calls and the most calls ever running at once."""

    def __init__(self, predictor, delay: float = 0.0) -> None:
        self.predictor = predictor
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def predict(self, image, expressions):
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.delay)
            return self.predictor.predict(image, expressions)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def server(web_predictor):
    probe = SerialisationProbe(web_predictor)
    settings = ServeSettings(max_upload_bytes=UPLOAD_LIMIT, max_pixels=4_000_000, max_results=64)
    with BackgroundServer(create_app(probe, settings)) as running:
        running.probe = probe
        yield running


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail(
            "Debian chromium is not installed: run `apt-get install -y chromium chromium-driver` "
            "(`make install` does it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(server.url + "/")
    yield page
    context.close()


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def post_image(server, name: str, data: bytes, expressions: str = "red"):
    body, content_type = multipart({"expressions": expressions}, {"image": (name, data)})
    return request(server, "POST", "/api/predict", body, {"Content-Type": content_type})


def submit(page, expected_selector: str) -> None:
    page.click("#submit")
    page.wait_for_selector(expected_selector, state="visible", timeout=60_000)


def error_text(page) -> str:
    page.wait_for_selector("#error", state="visible", timeout=60_000)
    return page.inner_text("#error")


def test_page_segments_a_geotiff_and_offers_its_downloads(page, server, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", colour_scene())
    page.set_input_files("#file", scene)
    page.fill("#expressions", "red\nblue")
    submit(page, "#result")
    assert "scene.tif: 600 x 500 px, EPSG:32633" in page.inner_text("#result-title")
    rows = page.locator("#predictions tbody tr")
    assert rows.count() == 2
    assert "red" in rows.nth(0).inner_text() and "blue" in rows.nth(1).inner_text()
    links = {a.inner_text(): a.get_attribute("href") for a in page.locator("#downloads a").all()}
    assert set(links) == {"Overlay PNG", "COCO RLE JSON", "GeoJSON", "Mask GeoTIFF"}
    overlay_loaded = page.evaluate(
        "() => document.getElementById('overlay').complete && "
        "document.getElementById('overlay').naturalWidth"
    )
    assert overlay_loaded == 600

    status, data = request(server, "GET", links["GeoJSON"])
    assert status == 200
    geojson = json.loads(data)
    assert geojson["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    for index in range(2):
        cells = rows.nth(index).locator("td")
        # the swatch has the colour of the expression's overlay tint (same palette entry)
        swatch = (
            cells.nth(0).locator(".swatch").evaluate("e => getComputedStyle(e).backgroundColor")
        )
        assert swatch == "rgb({}, {}, {})".format(*PALETTE[index])
        # ground area from the GeoJSON's metres, in m² below a hectare and ha above
        area = sum(
            f["properties"]["area_m2"]
            for f in geojson["features"]
            if f["properties"]["expression_index"] == index
        )
        assert cells.nth(5).inner_text() == format_area(area)
    x0, y0 = ORIGIN
    scene_bounds = (x0, y0 - 500 * PIXEL, x0 + 600 * PIXEL, y0)
    for feature in geojson["features"]:
        assert feature["properties"]["expression"] in ("red", "blue")
        left, bottom, right, top = shape(feature["geometry"]).bounds
        assert scene_bounds[0] <= left < right <= scene_bounds[2]
        assert scene_bounds[1] <= bottom < top <= scene_bounds[3]

    screenshot = tmp_path / "web-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "web-page.png")
    assert screenshot.stat().st_size > 10_000


def format_area(m2: float) -> str:
    if m2 < 10_000:
        return f"{round(m2):,} m²"
    return f"{m2 / 10_000:,.2f}".rstrip("0").rstrip(".") + " ha"


def test_page_shows_window_progress_of_a_large_scene(browser, web_predictor, tmp_path):
    probe = SerialisationProbe(web_predictor, delay=0.3)
    settings = ServeSettings(window=64, overlap=16)
    with BackgroundServer(create_app(probe, settings)) as running:
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        page.goto(running.url + "/")
        page.set_input_files("#file", write_geotiff(tmp_path / "big.tif", colour_scene(160, 160)))
        page.fill("#expressions", "red")
        page.click("#submit")
        page.wait_for_function(
            "() => /window [1-9]\\d* \\/ 9/.test(document.getElementById('status').textContent)",
            timeout=60_000,
        )
        page.wait_for_selector("#result", state="visible", timeout=60_000)
        assert page.inner_text("#status").startswith("Done in")
        context.close()


def test_pasted_image_is_segmented(page):
    image = np.moveaxis(colour_scene(120, 160), 0, -1).copy()
    encoded = base64.b64encode(png_bytes(image)).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "image.png", { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data }));
        }""",
        encoded,
    )
    assert "pasted.png" in page.inner_text("#file-name")
    page.fill("#expressions", "red")
    submit(page, "#result")
    assert "pasted.png: 160 x 120 px" in page.inner_text("#result-title")
    links = [a.inner_text() for a in page.locator("#downloads a").all()]
    assert links == ["Overlay PNG", "COCO RLE JSON"]  # no GeoJSON without georeferencing


def test_bad_inputs_show_clear_errors_while_the_page_keeps_working(page, server, tmp_path):
    page.fill("#expressions", "red")
    page.click("#submit")
    assert error_text(page) == "Choose, drop or paste an image first."

    good = png_bytes(np.moveaxis(colour_scene(64, 64), 0, -1).copy())
    cases = [
        ({"name": "empty.png", "mimeType": "image/png", "buffer": b""}, "red", "Error 400"),
        (
            {"name": "broken.tif", "mimeType": "image/tiff", "buffer": b"II*\x00" + bytes(300)},
            "red",
            "Error 400",
        ),
        (
            {"name": "huge.png", "mimeType": "image/png", "buffer": good + bytes(UPLOAD_LIMIT)},
            "red",
            "Error 413",
        ),
        ({"name": "good.png", "mimeType": "image/png", "buffer": good}, "  \n ", "Error 400"),
    ]
    messages = [
        "'empty.png': the file is empty (0 bytes)",
        "'broken.tif': cannot read the file as an image",
        "the upload is larger than the server's limit of 2 MB",
        "no expression given",
    ]
    for (payload, expressions, code), message in zip(cases, messages):
        page.set_input_files("#file", files=[payload])
        page.fill("#expressions", expressions)
        page.click("#submit")
        page.wait_for_function("() => !document.getElementById('submit').disabled")
        text = error_text(page)
        assert text.startswith(code) and message in text, text

    traversal = {"name": "../../etc/passwd.png", "mimeType": "image/png", "buffer": good}
    page.set_input_files("#file", files=[traversal])
    page.fill("#expressions", "red")
    submit(page, "#result")
    assert page.is_hidden("#error")
    assert page.inner_text("#result-title").startswith("passwd.png: 64 x 64 px")
    for link in page.locator("#result a").all():
        assert link.get_attribute("download").startswith("passwd.")
        assert "/../" not in link.get_attribute("href")


def test_api_rejects_unsafe_and_malformed_requests(server):
    good = png_bytes(np.moveaxis(colour_scene(64, 64), 0, -1).copy())
    status, data = post_image(server, "../../../etc/cron.d/evil.png", good)
    assert status == 200
    result = json.loads(data)
    assert result["image"]["name"] == "evil.png"
    names = [p["mask"]["name"] for p in result["predictions"]] + [result["overlay"]["name"]]
    assert all(name.startswith("evil.") and "/" not in name for name in names)
    status, _ = request(server, "GET", result["overlay"]["url"])
    assert status == 200

    result_id = result["id"]
    for path in [
        f"/api/results/{result_id}/../../../etc/passwd",
        f"/api/results/{result_id}/..%2F..%2Fetc%2Fpasswd",
        f"/api/results/{result_id}/%2e%2e",
        "/api/results/../serve/app.py",
        "/static/..%2Fapp.py",
        "/static/index.html/..",
        "/docs",
        "/openapi.json",
    ]:
        status, data = request(server, "GET", path)
        assert status == 404, path
        assert b"Traceback" not in data

    status, data = request(
        server, "POST", "/api/predict", b"just text", {"Content-Type": "text/plain"}
    )
    assert status == 400 and b"not a valid upload form" in data
    body, content_type = multipart({"expressions": "red"}, {})
    status, data = request(server, "POST", "/api/predict", body, {"Content-Type": content_type})
    assert status == 400 and b"form field 'image'" in data
    status, data = post_image(server, "pic.png", good, expressions="")
    assert status == 400 and b"no expression given" in data

    def chunks():  # no Content-Length: the limit is enforced while reading
        body = multipart({"expressions": "red"}, {"image": ("x.png", b"")})[0]
        yield body[: body.rindex(b"\r\n--")]  # the file part stays open
        for _ in range(UPLOAD_LIMIT // 65536 + 2):
            yield bytes(65536)

    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    content_type = multipart({}, {})[1]
    connection.request(
        "POST", "/api/predict", chunks(), {"Content-Type": content_type}, encode_chunked=True
    )
    response = connection.getresponse()
    assert response.status == 413 and b"limit of 2 MB" in response.read()
    connection.close()

    status, data = request(server, "GET", "/")
    assert status == 200 and b"AerialSeg" in data


def test_concurrent_requests_are_all_answered_one_model_call_at_a_time(server):
    image = png_bytes(np.moveaxis(colour_scene(96, 96), 0, -1).copy())
    results: list[tuple[int, bytes]] = []

    def client(index: int) -> None:
        results.append(post_image(server, f"client{index}.png", image, expressions="red\nblue"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 8 and all(status == 200 for status, _ in results)
    assert len({json.loads(data)["id"] for _, data in results}) == 8
    assert server.probe.most_running == 1


def test_page_and_downloads_are_served_while_a_prediction_runs(web_predictor):
    probe = SerialisationProbe(web_predictor, delay=1.5)
    with BackgroundServer(create_app(probe, ServeSettings())) as running:
        image = png_bytes(np.moveaxis(colour_scene(32, 32), 0, -1).copy())
        worker = threading.Thread(target=post_image, args=(running, "slow.png", image))
        worker.start()
        while probe.calls == 0:
            time.sleep(0.01)
        status, _ = request(running, "GET", "/api/info")
        still_predicting = probe.running == 1
        worker.join()
    assert status == 200 and still_predicting
