"""The app's page in a real (headless) Chromium: supports drawn with the mouse, one click,
masks equal to ``panet_jax.predict`` on what the page received; hostile inputs answered in
the page. Set ``PANET_APP_SCREENSHOT=<png>`` to save a picture of the page with a result."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import page_driver as drv
import pytest
from PIL import Image

MISSING = drv.browser_missing()
if MISSING and os.environ.get("PANET_REQUIRE_BROWSER", "") not in ("", "0"):  # CI: never skip
    raise RuntimeError(f"PANET_REQUIRE_BROWSER is set, but {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser tests skipped: {MISSING}")

SUPPORT_HW, SUPPORT_BOX = (120, 160), (30, 40, 90, 110)  # (y0, x0, y1, x1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("app_inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(drv.scene(rng, *SUPPORT_HW, SUPPORT_BOX)).save(d / "support.png")
    Image.fromarray(drv.scene(rng, 90, 130, (20, 30, 60, 90))).save(d / "query.jpg", quality=95)
    Image.fromarray(drv.scene(rng, 50, 60, (10, 10, 30, 40))).save(d / "abandoned.png")
    (d / "notes.png").write_text("not an image\n")
    Image.new("RGB", (5000, 5000), (90, 90, 90)).save(d / "huge.png")
    return {"dir": d, "model": drv.tiny_model(d / "tiny.npz")}


@pytest.fixture(scope="module")
def server(files, tmp_path_factory):
    temp = tmp_path_factory.mktemp("app_temp")
    srv = drv.Server(files["model"], temp / "app", temp / "server.log")
    yield srv
    assert srv.stop() == 0
    assert not (temp / "app").exists()  # the server's folder is gone once it stops


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = drv.launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    page = drv.open_page(browser, server.url)
    outside = []
    page.on("request", lambda r: r.url.startswith(server.url) or outside.append(r.url))
    yield page
    if not page.is_closed():
        page.close()
    assert outside == []  # the page fetched nothing from anywhere else


def _session(server) -> Path:
    sessions = sorted((server.temp_dir / "sessions").iterdir(), key=lambda p: p.stat().st_mtime)
    return sessions[-1]


def _segment_and_check(page, server, files) -> Path:
    """Click Segment; check the page's mask is ``predict`` on the support files it wrote."""
    import panet_jax

    drv.add_queries(page, [files["dir"] / "query.jpg"])
    text = drv.click_and_wait(page, "#segment")
    assert text.startswith("Segmented 1 query x 1 class in"), text
    masks = drv.result_masks(page)
    assert list(masks) == ["query_object_mask.png"]
    support = _session(server) / "supports" / "000"
    want = panet_jax.predict(files["model"], [support / "image.png"], [support / "fg.png"],
                             [files["dir"] / "query.jpg"], image_size=drv.WORKING_SIZE,
                             support_bg_masks=[support / "bg.png"])[0]  # fmt: skip
    got = masks["query_object_mask.png"]
    assert got.shape == (90, 130) and set(np.unique(got)) <= {0, 255}
    np.testing.assert_array_equal(got, want * 255)
    assert np.array_equal(np.asarray(Image.open(support / "image.png").convert("RGB")),
                          np.asarray(Image.open(files["dir"] / "support.png")))  # fmt: skip
    return support


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def test_scribbles_drawn_with_the_mouse_segment_like_predict(page, server, files):
    where = drv.upload_support(page, files["dir"] / "support.png", SUPPORT_HW)
    drv.choose(page, "Scribbles")
    drv.stroke(page, where, [(55, 60), (95, 60)])  # on the object, foreground layer
    drv.use_layer(page, 2)
    drv.stroke(page, where, [(20, 105), (140, 105)])  # below it, background layer
    assert drv.click_and_wait(page, "#add-support").startswith("Added class 'object'")
    support = _segment_and_check(page, server, files)
    fg, bg = _mask(support / "fg.png"), _mask(support / "bg.png")
    _, x0, y1, _ = SUPPORT_BOX
    assert fg.any() and bg.any() and not (fg & bg).any()
    assert fg[:, :x0].sum() == 0 and fg[y1:].sum() == 0 and fg[55:66, 55:96].any()
    assert bg[:y1].sum() == 0 and bg[100:111, 20:141].any()
    if os.environ.get("PANET_APP_SCREENSHOT"):
        drv.save_screenshot(page, os.environ["PANET_APP_SCREENSHOT"])
    with page.expect_request_finished(lambda r: "/queue/join" in r.url):  # its upload event
        drv.add_queries(page, [files["dir"] / "abandoned.png"])  # never segmented
    page.close()
    for _ in range(120):  # closing the tab deletes what it uploaded (the cache's copies first)
        if not support.exists() and not _tab_files_in_gradio_cache(server, files):
            break
        time.sleep(0.25)
    assert not support.parent.parent.exists()
    assert _tab_files_in_gradio_cache(server, files) == []


def _tab_files_in_gradio_cache(server, files) -> list[str]:
    """Files in Gradio's cache holding the tab's uploads or results (by content or name)."""
    names = ("support.png", "query.jpg", "abandoned.png")
    uploads = {(files["dir"] / n).read_bytes() for n in names}
    results = ("_overlay.png", "_mask.png", "preview.png")
    return [
        str(p) for p in (server.temp_dir / "gradio").rglob("*")
        if p.is_file() and (p.name.endswith(results) or p.read_bytes() in uploads)
    ]  # fmt: skip


def test_box_dragged_with_the_mouse_gives_a_box_support(page, server, files):
    where = drv.upload_support(page, files["dir"] / "support.png", SUPPORT_HW)
    drv.choose(page, "Box")
    drv.stroke(page, where, [(40, 30), (110, 90)])  # corner to corner
    assert drv.click_and_wait(page, "#add-support").startswith("Added class 'object'")
    support = _segment_and_check(page, server, files)
    fg, bg = _mask(support / "fg.png"), _mask(support / "bg.png")
    ys, xs = np.nonzero(fg)
    assert fg[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a filled rectangle
    assert np.array_equal(bg, ~fg)  # one box: background = everything outside it
    radius = 8 + 3  # brush radius + rendering slack, in image pixels (scale > 1)
    assert abs(ys.min() - 30) <= radius and abs(ys.max() - 89) <= radius
    assert abs(xs.min() - 40) <= radius and abs(xs.max() - 109) <= radius


def test_hostile_inputs_get_a_message_and_the_server_keeps_answering(page, server, files):
    assert "no class has a support" in drv.click_and_wait(page, "#segment")
    drv.upload_support(page, files["dir"] / "support.png", SUPPORT_HW)
    drv.choose(page, "Scribbles")
    assert "nothing is drawn on the foreground layer" in drv.click_and_wait(page, "#add-support")
    drv.choose(page, "Paint mask")
    drv.stroke(page, drv.upload_support(page, files["dir"] / "support.png", SUPPORT_HW),
               [(50, 50), (90, 70)])  # fmt: skip
    assert drv.click_and_wait(page, "#add-support").startswith("Added")
    drv.add_queries(page, [files["dir"] / "notes.png"])
    assert "query 1 (notes.png) is not an image file" in drv.click_and_wait(page, "#segment")
    drv.add_queries(page, [files["dir"] / "huge.png"])
    text = drv.click_and_wait(page, "#segment")
    assert "5000x5000 pixels; the largest side allowed is 4096" in text, text
    assert "Traceback" not in page.content()
    assert server.answers()
    drv.add_queries(page, [files["dir"] / "query.jpg"])
    assert drv.click_and_wait(page, "#segment").startswith("Segmented 1 query")


def test_only_the_apps_own_files_are_served(server, files):
    import urllib.error
    import urllib.request

    for path in ("/etc/passwd", str(files["model"])):
        url = f"{server.url}gradio_api/file={path}"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code in (403, 404)
